// The HTTP/1.1 + WebSocket server: a listener, a pool of I/O threads, and the sessions it accepts.
// It reaches the engine only through EngineClient (DESIGN.md: net → actors through one interface).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "actors/client.hpp"

namespace troupe::net {

struct ServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8000;  // 0: any free port (see port())
  std::string api_key;   // when set, /v1 routes need `Authorization: Bearer KEY`
  int http_threads = 4;
  size_t max_request_bytes = 2 * 1024 * 1024;
  size_t max_header_bytes = 16 * 1024;
  std::chrono::seconds read_timeout{60};
  std::chrono::seconds write_timeout{60};
  size_t max_pending_output = 16 * 1024 * 1024;
  size_t max_ws_generations = 64;
};

class Server {
 public:
  // Binds and listens (throws std::runtime_error naming the address when it cannot); start() serves.
  Server(EngineClient& engine, ServerOptions options);
  ~Server();  // stop()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  uint16_t port() const;
  void start();
  // Stops accepting, closes every connection (aborting its generations in the engine), waits for
  // the I/O threads; engine callbacks that arrive later are dropped. The engine must outlive this call.
  void stop();
  size_t connections() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace troupe::net
