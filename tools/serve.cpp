// `troupe serve`: the OpenAI-compatible server (REST + SSE, the WebSocket chat, /metrics) over the
// actor runtime. Flags follow vLLM's `vllm serve`.
#include <pthread.h>

#include <atomic>
#include <boost/program_options.hpp>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "actors/runtime_client.hpp"
#include "config/error.hpp"
#include "net/server.hpp"
#include "tools/command_error.hpp"
#include "tools/command_flags.hpp"
#include "tools/commands.hpp"
#include "tools/engine_flags.hpp"

namespace troupe {

namespace po = boost::program_options;

int serve_command(int argc, char** argv) {
  po::options_description flags("troupe serve: an OpenAI-compatible HTTP and WebSocket server for a model");
  EngineFlags engine;
  std::string model_dir, served_model_name, api_key, max_request_bytes = "2MiB", chat_template, pooling = "last";
  std::string host = "127.0.0.1";
  int port = 8000, http_threads = 4, max_queued_requests = ServingOptions{}.max_queued_requests;
  bool quiet = false;
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("model", po::value(&model_dir)->required(), "Hugging Face model directory")
      ("host", po::value(&host), "address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
      ("port", po::value(&port), "TCP port (default 8000; 0 picks a free one, printed in the ready line)")
      ("served-model-name", po::value(&served_model_name), "the model's name in the API (default: the directory's name)")
      ("api-key", po::value(&api_key), "require `Authorization: Bearer KEY` on /v1 routes (also read from VLLM_API_KEY)")
      ("max-request-bytes", po::value(&max_request_bytes), "largest request body or WebSocket message (default 2MiB)")
      ("max-queued-requests", po::value(&max_queued_requests), "waiting requests beyond which requests get 503 (default 1024)")
      ("http-threads", po::value(&http_threads), "threads serving connections (default 4)")
      ("chat-template", po::value(&chat_template), "a Jinja chat template file instead of the model's")
      ("pooling", po::value(&pooling), "embeddings: last or mean (default last)")
      ("quiet", po::bool_switch(&quiet), "no start-up lines on stderr");
  // clang-format on
  flags.add(engine.options());

  RuntimeOptions runtime;
  ServingOptions serving;
  net::ServerOptions server_options;
  try {
    if (!parse_flags(argc, argv, flags)) return 0;
    if (port < 0 || port > 65535) throw ConfigError("--port must be in [0, 65535], got " + std::to_string(port));
    if (http_threads < 1 || http_threads > 1024)
      throw ConfigError("--http-threads must be in [1, 1024], got " + std::to_string(http_threads));
    if (max_queued_requests < 0)
      throw ConfigError("--max-queued-requests must be non-negative, got " + std::to_string(max_queued_requests));
    if (pooling != "last" && pooling != "mean") throw ConfigError("--pooling: expected last or mean, got '" + pooling + "'");
    const int64_t body_limit = parse_bytes(max_request_bytes, "max-request-bytes");
    if (body_limit < 1024 || body_limit > (int64_t{1} << 30))
      throw ConfigError("--max-request-bytes must be between 1KiB and 1GiB, got '" + max_request_bytes + "'");
    if (api_key.empty())
      if (const char* env = std::getenv("VLLM_API_KEY")) api_key = env;

    runtime = engine.runtime_options(model_dir);
    serving.served_model_name = served_model_name;
    if (!chat_template.empty()) serving.chat_template = chat_template;
    serving.max_queued_requests = max_queued_requests;
    serving.pooling = pooling;
    server_options.host = host;
    server_options.port = static_cast<uint16_t>(port);
    server_options.api_key = api_key;
    server_options.http_threads = http_threads;
    server_options.max_request_bytes = static_cast<size_t>(body_limit);
  } catch (...) {
    return command_error("serve");
  }

  // SIGINT and SIGTERM go to one waiting thread (every thread started from here on inherits the
  // mask). While the model loads a signal just ends the process; once serving, it stops cleanly.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::mutex mutex;
  std::condition_variable cv;
  int received = 0;
  std::atomic<bool> serving_now{false};
  std::thread([&, signals] {
    int signal = 0;
    sigwait(&signals, &signal);
    if (!serving_now.load()) {
      std::fprintf(stderr, "troupe serve: interrupted while starting\n");
      std::_Exit(128 + signal);
    }
    std::lock_guard lock(mutex);
    received = signal;
    cv.notify_all();
  }).detach();

  if (!quiet) runtime.log = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  try {
    std::unique_ptr<EngineClient> client = make_runtime_client(runtime, serving);
    {
      net::Server server(*client, server_options);
      serving_now = true;
      server.start();
      const bool ipv6 = host.find(':') != std::string::npos;  // URLs bracket IPv6 addresses
      std::printf("listening on http://%s%s%s:%u\n", ipv6 ? "[" : "", host.c_str(), ipv6 ? "]" : "",
                  static_cast<unsigned>(server.port()));
      std::fflush(stdout);
      std::unique_lock lock(mutex);
      cv.wait(lock, [&] { return received != 0; });
      if (!quiet) std::fprintf(stderr, "troupe serve: signal %d, stopping\n", received);
      lock.unlock();
      server.stop();  // closes connections and aborts their generations while the engine still runs
    }
    const bool failed = !client->healthy();
    client.reset();
    if (failed) {
      // A failed engine's worker may still be blocked in a collective, its runtime abandoned: exit-time
      // destructors must not wait on it.
      std::fprintf(stderr, "troupe serve: stopped with a failed engine\n");
      std::fflush(stdout);
      std::fflush(stderr);
      std::_Exit(1);
    }
    return 0;
  } catch (...) {
    return command_error("serve");
  }
}

}  // namespace troupe
