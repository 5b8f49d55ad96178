#include "net/server.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "net/http_session.hpp"
#include "net/session_context.hpp"

namespace troupe::net {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// How long stop() lets connections finish closing before it stops the I/O threads outright.
constexpr std::chrono::seconds kDrainTime{5};

Limits limits_of(const ServerOptions& o) {
  Limits l;
  l.max_request_bytes = o.max_request_bytes;
  l.max_header_bytes = o.max_header_bytes;
  l.read_timeout = o.read_timeout;
  l.write_timeout = o.write_timeout;
  l.max_pending_output = o.max_pending_output;
  l.max_ws_generations = o.max_ws_generations;
  return l;
}

tcp::endpoint resolve(asio::io_context& ioc, const std::string& host, uint16_t port) {
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  if (!ec) return {address, port};
  tcp::resolver resolver(ioc);
  auto results = resolver.resolve(host, std::to_string(port), ec);
  if (ec || results.empty()) throw std::runtime_error("cannot resolve host '" + host + "': " + ec.message());
  return results.begin()->endpoint();
}

}  // namespace

struct Server::Impl {
  // Sessions outlive nothing here: the registry and the API are declared before the io_context, so
  // handlers (and the sessions they hold) destroyed with it still find them.
  ServerOptions options;
  Api api;
  SessionRegistry registry;
  std::shared_ptr<Gate> gate = std::make_shared<Gate>();
  SessionContext context;
  asio::io_context ioc;
  tcp::acceptor acceptor;          // on its own strand: accept handlers and stop() never overlap
  asio::steady_timer retry_timer;  // on the acceptor's strand too
  uint16_t port = 0;
  std::vector<std::thread> threads;
  std::mutex mutex;
  std::condition_variable idle;
  int running = 0;
  bool started = false;
  bool stopped = false;

  Impl(EngineClient& engine, ServerOptions o)
      : options(std::move(o)),
        api(engine, options.api_key),
        context{api, limits_of(options), gate, registry},
        ioc(options.http_threads),
        acceptor(asio::make_strand(ioc)),
        retry_timer(acceptor.get_executor()) {
    if (options.http_threads < 1) throw std::invalid_argument("http_threads must be at least 1");
    const tcp::endpoint endpoint = resolve(ioc, options.host, options.port);
    boost::system::error_code ec;
    acceptor.open(endpoint.protocol(), ec);
    if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor.bind(endpoint, ec);
    if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) throw std::runtime_error("cannot listen on " + options.host + ":" + std::to_string(options.port) + ": " + ec.message());
    port = acceptor.local_endpoint().port();
  }

  void accept() {
    // Each connection gets its own strand: its handlers never run concurrently, on any thread.
    acceptor.async_accept(asio::make_strand(ioc), [this](boost::system::error_code ec, tcp::socket socket) {
      if (!acceptor.is_open()) return;
      if (ec) {
        // Out of file descriptors and the like: retry shortly instead of spinning.
        retry_timer.expires_after(std::chrono::milliseconds(50));
        return retry_timer.async_wait([this](boost::system::error_code e) {
          if (!e) accept();
        });
      }
      // SSE sends small chunks: Nagle's algorithm would hold them back behind delayed ACKs.
      socket.set_option(tcp::no_delay(true), ec);
      run_http_session(std::move(socket), context);
      accept();
    });
  }
};

Server::Server(EngineClient& engine, ServerOptions options) : impl_(std::make_unique<Impl>(engine, std::move(options))) {}

Server::~Server() { stop(); }

uint16_t Server::port() const { return impl_->port; }

size_t Server::connections() const { return impl_->registry.size(); }

void Server::start() {
  Impl& s = *impl_;
  std::lock_guard lock(s.mutex);
  if (s.started || s.stopped) return;
  s.started = true;
  s.accept();
  for (int i = 0; i < s.options.http_threads; ++i) {
    ++s.running;
    s.threads.emplace_back([&s] {
      s.ioc.run();
      std::lock_guard l(s.mutex);
      --s.running;
      s.idle.notify_all();
    });
  }
}

void Server::stop() {
  Impl& s = *impl_;
  {
    std::lock_guard lock(s.mutex);
    if (s.stopped) return;
    s.stopped = true;
  }
  // On an I/O thread, so no connection is accepted after the sessions were told to close.
  asio::post(s.acceptor.get_executor(), [&s] {
    boost::system::error_code ec;
    s.acceptor.close(ec);
    s.retry_timer.cancel();
    s.registry.shutdown_all();
  });
  {
    // With the acceptor and every connection closed the threads run out of work and return.
    std::unique_lock lock(s.mutex);
    if (!s.idle.wait_for(lock, kDrainTime, [&s] { return s.running == 0; })) s.ioc.stop();
  }
  for (std::thread& t : s.threads) t.join();
  s.threads.clear();
  s.gate->close();
  if (!s.started) {
    boost::system::error_code ec;
    s.acceptor.close(ec);
  }
}

}  // namespace troupe::net
