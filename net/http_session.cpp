#include "net/http_session.hpp"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket/rfc6455.hpp>
#include <array>
#include <optional>
#include <sstream>

#include "net/sse.hpp"
#include "net/websocket_session.hpp"

namespace troupe::net {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

// How long a closing connection may keep sending (e.g. the rest of a body we refused) before we
// drop it: reading it first lets the client see our answer instead of a reset.
constexpr std::chrono::seconds kLingerTime{2};

bool is_disconnect(const beast::error_code& ec) {
  return ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
         ec == asio::error::broken_pipe || ec == asio::error::operation_aborted || ec == beast::error::timeout ||
         ec == http::error::partial_message;
}

std::string query_param(std::string_view target, std::string_view name) {
  const size_t q = target.find('?');
  if (q == std::string_view::npos) return {};
  std::string_view query = target.substr(q + 1);
  while (!query.empty()) {
    const size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    if (pair.size() > name.size() && pair.starts_with(name) && pair[name.size()] == '=')
      return std::string(pair.substr(name.size() + 1));
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return {};
}

// Reads requests one at a time and answers them in order. While a generation runs, the session
// keeps one header read outstanding: it completes with an error when the client goes away (so the
// engine is told to abort), or holds the next pipelined request until this answer is written.
class HttpSession : public Session, public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(tcp::socket&& socket, SessionContext& context)
      : stream_(std::move(socket)),
        context_(context),
        mailbox_(std::make_shared<Mailbox>(stream_.get_executor())),
        timer_(stream_.get_executor()) {}
  ~HttpSession() override { context_.registry.remove(this); }

  void run() {
    context_.registry.add(this, weak_from_this());
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read_header(); });
  }

  void shutdown() override {
    asio::post(stream_.get_executor(), [self = shared_from_this()] { self->close(); });
  }

 private:
  // ---- reading ----

  void read_header() {
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(context_.limits.max_header_bytes));
    parser_->body_limit(context_.limits.max_request_bytes);
    // A read-ahead during a generation waits as long as the generation takes; an idle wait for the
    // next request is bounded by the read timeout.
    if (busy_) stream_.expires_never();
    else stream_.expires_after(context_.limits.read_timeout);
    reading_ = true;
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
  }

  void on_header(beast::error_code ec) {
    reading_ = false;
    if (closed_) return;
    if (closing_) return drain();
    ++timer_epoch_;  // what the idle timer was waiting for has happened
    timer_.cancel();
    if (busy_) {
      if (is_disconnect(ec)) return client_gone();
      // The next request (or a malformed one) waits until the current answer is out.
      deferred_ = ec;
      request_ready_ = !ec;
      return;
    }
    if (ec) return on_read_error(ec);
    on_header_ready();
  }

  void on_header_ready() {
    busy_ = true;
    auto& request = parser_->get();
    // curl and others wait for "100 Continue" before sending a large body (or until a refusal).
    if (beast::iequals(request[http::field::expect], "100-continue")) {
      continue_ = std::make_shared<http::response<http::empty_body>>(http::status::continue_, request.version());
      stream_.expires_after(context_.limits.write_timeout);
      return http::async_write(stream_, *continue_, [self = shared_from_this()](beast::error_code ec, size_t) {
        if (ec || self->closed_) return self->close();
        self->read_body();
      });
    }
    read_body();
  }

  void read_body() {
    stream_.expires_after(context_.limits.read_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->on_body(ec); });
  }

  void on_body(beast::error_code ec) {
    if (closed_) return;
    if (ec) return on_read_error(ec);
    dispatch_request();
  }

  // A request we could not read: answer what the client can act on, then close (the stream may
  // be anywhere inside the bad request, so keep-alive is over).
  void on_read_error(beast::error_code ec) {
    if (ec == http::error::end_of_stream || is_disconnect(ec)) return close();
    keep_alive_ = false;
    busy_ = true;
    if (ec == http::error::body_limit) {
      return write_reply(Api::error_reply(RequestError(
          413, "Request body too large: the limit is " + std::to_string(context_.limits.max_request_bytes) + " bytes", "",
          "RequestEntityTooLargeError")));
    }
    if (ec == http::error::header_limit) {
      return write_reply(Api::error_reply(RequestError(
          431, "Request headers too large: the limit is " + std::to_string(context_.limits.max_header_bytes) + " bytes", "",
          "RequestHeaderFieldsTooLargeError")));
    }
    write_reply(Api::error_reply(RequestError(400, "Malformed HTTP request: " + ec.message())));
  }

  // ---- answering ----

  void dispatch_request() {
    http::request<http::string_body> request = parser_->release();
    keep_alive_ = request.keep_alive();
    version_ = request.version();
    const std::string_view target(request.target().data(), request.target().size());
    const std::string_view path = Api::path_of(target);
    if (path == "/v1/ws" && beast::websocket::is_upgrade(request)) return upgrade(request, target);

    const HttpRequest api_request{std::string_view(request.method_string().data(), request.method_string().size()), target,
                                  std::string_view(request[http::field::authorization].data(),
                                                   request[http::field::authorization].size()),
                                  request.body()};
    ApiResult result = context_.api.handle(api_request, make_post(context_.gate, mailbox_));
    if (!result.pending) return write_reply(std::move(result.reply));

    pending_ = std::move(result.pending);
    // The engine holds the pending result, so it holds this session only weakly (it may keep a
    // listener past the server's life); the session holds itself until the answer is out.
    self_ = shared_from_this();
    streaming_ = pending_->stream();
    if (streaming_) start_stream();
    pending_->begin([weak = weak_from_this()](Output output) {
      if (auto self = weak.lock()) self->on_output(std::move(output));
    });
    read_header();  // the read-ahead that notices a client going away
  }

  void upgrade(const http::request<http::string_body>& request, std::string_view target) {
    const std::string_view auth(request[http::field::authorization].data(), request[http::field::authorization].size());
    // Browsers cannot set headers on a WebSocket: the key may also come as ?api_key=KEY.
    if (!context_.api.authorized("/v1/ws", auth) &&
        !context_.api.authorized("/v1/ws", "Bearer " + query_param(target, "api_key"))) {
      keep_alive_ = false;
      return write_reply(Api::error_reply(RequestError(401, "Unauthorized", "", "AuthenticationError")));
    }
    std::ostringstream raw;
    raw << request.base();
    stream_.expires_never();
    closed_ = true;  // this session's work is over; the WebSocket session owns the socket now
    context_.registry.remove(this);
    run_websocket_session(stream_.release_socket(), raw.str(), context_);
  }

  void write_reply(HttpReply reply) {
    auto response = std::make_shared<http::response<http::string_body>>(static_cast<http::status>(reply.status), version_);
    response->set(http::field::server, "troupe");
    if (!reply.content_type.empty()) response->set(http::field::content_type, reply.content_type);
    for (auto& [name, value] : reply.headers) response->set(name, value);
    response->body() = std::move(reply.body);
    response->keep_alive(keep_alive_);
    response->prepare_payload();
    stream_.expires_after(context_.limits.write_timeout);
    http::async_write(stream_, *response, [self = shared_from_this(), response](beast::error_code ec, size_t) {
      if (ec) return self->close();
      self->response_done();
    });
  }

  // SSE: the header now, then each piece as one HTTP chunk (HTTP/1.0: raw bytes, then close).
  void start_stream() {
    chunked_ = version_ >= 11;
    if (!chunked_) keep_alive_ = false;
    stream_header_ = std::make_shared<http::response<http::empty_body>>(http::status::ok, version_);
    stream_header_->set(http::field::server, "troupe");
    stream_header_->set(http::field::content_type, kSseContentType);
    stream_header_->set(http::field::cache_control, "no-cache");
    stream_header_->keep_alive(keep_alive_);
    if (chunked_) stream_header_->chunked(true);
    stream_serializer_.emplace(*stream_header_);
    writing_ = true;
    stream_.expires_after(context_.limits.write_timeout);
    http::async_write_header(stream_, *stream_serializer_,
                             [self = shared_from_this()](beast::error_code ec, size_t) { self->on_stream_write(ec); });
  }

  void on_output(Output output) {
    if (closed_) return;
    if (!streaming_) {
      pending_.reset();
      return write_reply({output.status, "application/json", std::move(output.data), {}});
    }
    queued_ += output.data;
    stream_last_ = stream_last_ || output.last;
    // A client that stops reading must not make us buffer without end.
    if (queued_.size() > context_.limits.max_pending_output) return client_gone();
    flush();
  }

  void flush() {
    if (writing_ || closed_) return;
    auto done = [self = shared_from_this()](beast::error_code ec, size_t) { self->on_stream_write(ec); };
    stream_.expires_after(context_.limits.write_timeout);
    if (!queued_.empty()) {
      writing_ = true;
      in_flight_ = std::move(queued_);
      queued_.clear();
      if (chunked_) asio::async_write(stream_, http::make_chunk(asio::buffer(in_flight_)), std::move(done));
      else asio::async_write(stream_, asio::buffer(in_flight_), std::move(done));
    } else if (stream_last_ && !stream_ended_) {
      stream_ended_ = true;
      pending_.reset();
      if (!chunked_) return response_done();
      writing_ = true;
      asio::async_write(stream_, http::make_chunk_last(), std::move(done));
    }
  }

  void on_stream_write(beast::error_code ec) {
    writing_ = false;
    if (closed_) return;
    if (ec) return client_gone();
    if (stream_ended_ && queued_.empty()) return response_done();
    flush();
  }

  void response_done() {
    // A write can complete successfully after close() (the server stopping) already ran.
    if (closed_) return;
    busy_ = false;
    streaming_ = false;
    stream_last_ = stream_ended_ = false;
    stream_serializer_.reset();
    stream_header_.reset();
    in_flight_.clear();
    pending_.reset();
    const auto keep = std::move(self_);  // the pending async operations hold the session from here
    if (!keep_alive_) return linger_close();
    if (deferred_) {
      const beast::error_code ec = deferred_;
      deferred_ = {};
      return on_read_error(ec);
    }
    if (request_ready_) {
      request_ready_ = false;
      return on_header_ready();
    }
    if (reading_) return arm_timer(context_.limits.read_timeout);  // the read-ahead goes on, now bounded
    read_header();
  }

  // ---- closing ----

  void client_gone() {
    if (pending_) pending_->abort();
    pending_.reset();
    close();
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    if (pending_) pending_->abort();
    pending_.reset();
    const auto keep = std::move(self_);
    ++timer_epoch_;
    timer_.cancel();
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
  }

  // Connection: close, or an error answer: stop sending, read what the client still sends for a
  // moment, then close.
  void linger_close() {
    closing_ = true;
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    arm_timer(kLingerTime);
    if (!reading_) drain();
  }

  void drain() {
    if (closed_) return;
    reading_ = true;
    stream_.expires_never();
    stream_.async_read_some(asio::buffer(drain_buffer_), [self = shared_from_this()](beast::error_code ec, size_t) {
      self->reading_ = false;
      if (ec) return self->close();
      self->drain();
    });
  }

  void arm_timer(std::chrono::seconds after) {
    if (closed_) return;  // a timer on a closed session would only hold the server's threads
    const uint64_t epoch = ++timer_epoch_;
    timer_.expires_after(after);
    timer_.async_wait([self = shared_from_this(), epoch](beast::error_code ec) {
      if (!ec && epoch == self->timer_epoch_) self->close();
    });
  }

  beast::tcp_stream stream_;
  SessionContext& context_;
  std::shared_ptr<Mailbox> mailbox_;
  std::shared_ptr<HttpSession> self_;  // while a pending result is answered
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  asio::steady_timer timer_;  // bounds a read-ahead left over after an answer, and lingering
  uint64_t timer_epoch_ = 0;

  unsigned version_ = 11;
  bool keep_alive_ = true;
  bool busy_ = false;           // between reading a request and writing the last byte of its answer
  bool reading_ = false;        // a header (or drain) read is outstanding
  bool request_ready_ = false;  // a pipelined request's header arrived while busy
  beast::error_code deferred_;  // a bad pipelined request, answered after the current one
  bool closing_ = false;
  bool closed_ = false;
  std::shared_ptr<http::response<http::empty_body>> continue_;

  std::shared_ptr<Pending> pending_;
  bool streaming_ = false;
  bool chunked_ = true;
  bool writing_ = false;
  bool stream_last_ = false;   // the generation's last output is queued
  bool stream_ended_ = false;  // the terminating chunk is written (or being written)
  std::string queued_;
  std::string in_flight_;
  std::shared_ptr<http::response<http::empty_body>> stream_header_;
  std::optional<http::response_serializer<http::empty_body>> stream_serializer_;
  std::array<char, 4096> drain_buffer_;
};

}  // namespace

void run_http_session(tcp::socket socket, SessionContext& context) {
  std::make_shared<HttpSession>(std::move(socket), context)->run();
}

}  // namespace troupe::net
