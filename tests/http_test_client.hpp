// A small blocking HTTP/1.1 client over POSIX sockets for the server tests: it sends exactly the
// bytes a test writes (pipelining, half-sent bodies, abrupt closes) and parses what comes back,
// including chunked bodies. Every read has a timeout so a broken server fails a test, not the suite.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>

namespace troupe::test {

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;                            // de-chunked
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

class HttpConnection {
 public:
  explicit HttpConnection(uint16_t port, std::chrono::milliseconds timeout = std::chrono::seconds(10)) : timeout_(timeout) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) throw std::runtime_error("connect failed");
  }
  ~HttpConnection() { close(); }
  HttpConnection(const HttpConnection&) = delete;

  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  // Closes with a reset (SO_LINGER 0), as a crashed client would.
  void reset() {
    linger l{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close();
  }

  void send(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) throw std::runtime_error("send failed");
      data.remove_prefix(static_cast<size_t>(n));
    }
  }

  // Reads until `needle` is in the received bytes (returned and consumed up to its end).
  std::string read_until(std::string_view needle) {
    size_t pos;
    while ((pos = buffer_.find(needle)) == std::string::npos) fill();
    std::string out = buffer_.substr(0, pos + needle.size());
    buffer_.erase(0, pos + needle.size());
    return out;
  }

  // True when the server closed the connection within the timeout (after any unread bytes).
  bool closed_by_peer() {
    try {
      while (true) fill();
    } catch (const std::runtime_error& e) {
      return std::string_view(e.what()) == "closed";
    }
  }

  HttpResponse read_response() {
    HttpResponse r;
    const std::string head = read_until("\r\n\r\n");
    size_t line_end = head.find("\r\n");
    const std::string status_line = head.substr(0, line_end);
    r.status = std::stoi(status_line.substr(status_line.find(' ') + 1, 3));
    size_t pos = line_end + 2;
    while (pos < head.size() - 2) {
      const size_t end = head.find("\r\n", pos);
      const std::string line = head.substr(pos, end - pos);
      const size_t colon = line.find(':');
      std::string name = line.substr(0, colon);
      std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
      std::string value = line.substr(colon + 1);
      value.erase(0, value.find_first_not_of(' '));
      r.headers[name] = value;
      pos = end + 2;
    }
    if (r.status / 100 == 1 || r.status == 204 || r.status == 304) return r;  // no body (RFC 9112 6.3)
    if (r.header("transfer-encoding") == "chunked") {
      while (true) {
        const std::string size_line = read_until("\r\n");
        const size_t size = std::stoul(size_line, nullptr, 16);
        r.body += read_exactly(size);
        read_until("\r\n");
        if (size == 0) break;
      }
    } else if (!r.header("content-length").empty()) {
      r.body = read_exactly(std::stoul(r.header("content-length")));
    } else {
      try {
        while (true) fill();
      } catch (const std::runtime_error&) {
      }
      r.body = std::move(buffer_);
      buffer_.clear();
    }
    return r;
  }

  std::string read_exactly(size_t n) {
    while (buffer_.size() < n) fill();
    std::string out = buffer_.substr(0, n);
    buffer_.erase(0, n);
    return out;
  }

 private:
  void fill() {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout_.count())) <= 0) throw std::runtime_error("timeout");
    char chunk[65536];
    const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n <= 0) throw std::runtime_error("closed");
    buffer_.append(chunk, static_cast<size_t>(n));
  }

  int fd_ = -1;
  std::chrono::milliseconds timeout_;
  std::string buffer_;
};

inline std::string http_request_text(std::string_view method, std::string_view target, std::string_view body = {},
                                     std::string_view extra_headers = {}, bool keep_alive = true) {
  std::string r = std::string(method) + " " + std::string(target) + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  if (!body.empty() || method == "POST") {
    r += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  if (!keep_alive) r += "Connection: close\r\n";
  r += extra_headers;
  r += "\r\n";
  r += body;
  return r;
}

// One request on its own connection.
inline HttpResponse http_call(uint16_t port, std::string_view method, std::string_view target, std::string_view body = {},
                              std::string_view extra_headers = {}) {
  HttpConnection c(port);
  c.send(http_request_text(method, target, body, extra_headers, false));
  return c.read_response();
}

}  // namespace troupe::test
