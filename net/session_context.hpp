// What every connection's session shares with the server: the API, the limits, the gate through
// which engine threads post into sessions, and the registry that lets the server close them all.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>
#include <vector>

#include "net/api.hpp"

namespace troupe::net {

// Every limit is set explicitly (Beast's defaults are 8 KiB headers, 1 MB bodies, 16 MiB WebSocket
// messages and no WebSocket timeouts; TGI and vLLM take 2 MB bodies).
struct Limits {
  size_t max_request_bytes = 2 * 1024 * 1024;  // an HTTP body or a WebSocket message
  size_t max_header_bytes = 16 * 1024;         // bearer tokens and proxies' headers fit
  std::chrono::seconds read_timeout{60};       // to read one request, or to wait for the next on a kept-alive connection
  std::chrono::seconds write_timeout{60};      // for the client to take one write
  size_t max_pending_output = 16 * 1024 * 1024;  // bytes queued for a client that does not read
  size_t max_ws_generations = 64;                // conversations in flight on one socket
};

// Engine threads post into sessions only through the gate: once the server closes it, late engine
// callbacks are dropped instead of touching an io_context that is going away.
class Gate {
 public:
  template <class F>
  void pass(F&& f) {
    std::shared_lock lock(mutex_);
    if (!closed_) f();
  }
  void close() {
    std::unique_lock lock(mutex_);
    closed_ = true;
  }

 private:
  std::shared_mutex mutex_;
  bool closed_ = false;
};

// A session's strand as engine threads see it: through a weak pointer, so a listener the engine
// keeps after the session (or the whole server) is gone holds no executor of a dead io_context.
struct Mailbox {
  explicit Mailbox(boost::asio::any_io_executor e) : executor(std::move(e)) {}
  boost::asio::any_io_executor executor;
};

inline Post make_post(std::shared_ptr<Gate> gate, std::weak_ptr<Mailbox> mailbox) {
  return [gate = std::move(gate), mailbox = std::move(mailbox)](std::function<void()> f) {
    gate->pass([&] {
      if (auto m = mailbox.lock()) boost::asio::post(m->executor, std::move(f));
    });
  };
}

class Session {
 public:
  virtual ~Session() = default;
  // Closes the connection from any thread; the session aborts its generations as on a disconnect.
  virtual void shutdown() = 0;
};

class SessionRegistry {
 public:
  void add(const Session* key, std::weak_ptr<Session> session) {
    std::lock_guard lock(mutex_);
    sessions_[key] = std::move(session);
  }
  void remove(const Session* key) {
    std::lock_guard lock(mutex_);
    sessions_.erase(key);
  }
  size_t size() {
    std::lock_guard lock(mutex_);
    return sessions_.size();
  }
  void shutdown_all() {
    std::vector<std::shared_ptr<Session>> live;
    {
      std::lock_guard lock(mutex_);
      for (auto& [key, weak] : sessions_)
        if (auto s = weak.lock()) live.push_back(std::move(s));
    }
    for (auto& s : live) s->shutdown();
  }

 private:
  std::mutex mutex_;
  std::unordered_map<const Session*, std::weak_ptr<Session>> sessions_;
};

struct SessionContext {
  Api& api;
  Limits limits;
  std::shared_ptr<Gate> gate;
  SessionRegistry& registry;
};

}  // namespace troupe::net
