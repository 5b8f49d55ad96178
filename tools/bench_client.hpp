// The load side of `troupe bench serve`: an HTTP/1.1 client (Boost.Beast, kept out of this header)
// that streams OpenAI completions from any compatible server, the arrival process, and what one
// streamed response measures. Times are client-side steady-clock readings.
//
// Definitions (vLLM's `bench serve`, see ../shared/REFERENCE.md):
//   - a request's clock starts just before it is sent (connecting included, as with a fresh
//     connection in vLLM's client);
//   - a token chunk is an SSE event whose `choices` carry output: `text` (completions) or
//     `delta.content`, `delta.reasoning_content`, `delta.reasoning`, `delta.tool_calls` (chat);
//     a role-only or finish-only chunk carries none;
//   - TTFT: start to the first token chunk; ITL: each gap between consecutive token chunks;
//     E2EL: start to the last event with non-empty `choices` (a finish-only chunk included);
//   - output tokens: `usage.completion_tokens` of the usage chunk, else the number of token chunks;
//   - success: status 200, at least one token chunk, no error event, the stream ended cleanly.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tools/bench_dataset.hpp"

namespace troupe {

using BenchClock = std::chrono::steady_clock;

// http://host[:port][/prefix]; routes are appended to the prefix.
struct BaseUrl {
  std::string host;
  std::string port = "80";
  std::string prefix;  // without a trailing slash
};
BaseUrl parse_base_url(const std::string& url);  // throws ConfigError naming --base-url

struct HttpReply {
  int status = 0;     // 0: no response (see error)
  std::string body;
  std::string error;  // the connection problem when status is 0
};

// Small blocking requests (model list, /tokenize, /metrics) over one keep-alive connection.
class HttpFetcher {
 public:
  HttpFetcher(BaseUrl url, std::string api_key);
  ~HttpFetcher();
  HttpFetcher(const HttpFetcher&) = delete;
  HttpFetcher& operator=(const HttpFetcher&) = delete;
  HttpReply get(const std::string& route, std::chrono::milliseconds timeout);
  HttpReply post(const std::string& route, const std::string& json_body, std::chrono::milliseconds timeout);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The message of an OpenAI-style error body ({"error": {"message": ...}}, or vLLM's older
// {"message": ...}), else the body itself cut to 200 bytes.
std::string error_message(std::string_view body);

// What one streamed response measured.
struct StreamMeasure {
  bool ok = false;
  std::string error;                  // why it failed (the failure's reason), empty when ok
  double ttft = 0.0;                  // seconds
  double e2el = 0.0;                  // seconds
  std::vector<double> itl;            // seconds, one per gap between token chunks
  int token_chunks = 0;
  std::optional<int> usage_prompt_tokens;
  std::optional<int> usage_completion_tokens;
  std::string text;                   // the generated text (choice 0)
};

// Reads an SSE body fed in pieces as they arrive, each with its arrival time.
class StreamRecorder {
 public:
  explicit StreamRecorder(BenchClock::time_point start) : start_(start) {}
  void feed(std::string_view bytes, BenchClock::time_point at);
  // The body ended (cleanly or not: `transport_error` says why not).
  StreamMeasure finish(const std::string& transport_error = {});

 private:
  void event(std::string_view data, BenchClock::time_point at);

  BenchClock::time_point start_;
  std::string pending_;   // bytes of an event not yet complete
  std::string data_;      // data lines of the current event
  bool has_data_ = false;
  std::optional<BenchClock::time_point> first_token_, last_token_, last_choices_;
  StreamMeasure m_;
  bool done_ = false;     // [DONE] seen
};

// Offsets in seconds from the start at which n arrivals come: all at 0 for an infinite rate, else
// the first at 0 and gamma-distributed gaps with shape `burstiness` and mean 1/rate (Poisson when
// burstiness is 1; smaller is burstier), as vLLM's `--burstiness`.
std::vector<double> arrival_offsets(size_t n, double request_rate, double burstiness, uint64_t seed);

struct LoadOptions {
  BaseUrl url;
  std::string api_key;
  std::string model;
  bool ignore_eos = false;
  std::optional<double> temperature;
  double request_rate = 0.0;  // requests (multi-turn: chats) per second; 0 or inf: all at once
  double burstiness = 1.0;
  int max_concurrency = 0;    // requests in flight at most; 0: no limit
  double timeout_s = 6 * 3600.0;
  uint64_t seed = 0;
  bool progress = false;      // a progress line on stderr
};

// One request's record, in dataset order (chat-major for multi-turn).
struct RequestRecord {
  int conversation = 0;
  int turn = 0;
  double start_s = 0.0;  // when it was sent, seconds after the run started
  int input_tokens = 0;  // the server's usage.prompt_tokens, else the dataset's length
  int output_tokens = 0; // 0 for a failed request
  bool usage_reported = false;
  StreamMeasure measure;
};

struct LoadResult {
  std::vector<RequestRecord> requests;
  double duration_s = 0.0;  // first arrival to the last request's end
  int peak_concurrency = 0;
};

// Sends the dataset's requests (the first `limit` conversations when limit > 0) and waits for all.
// Chats send each turn after the previous reply, with that reply in the history; arrivals apply to
// chats. A request waits for a free slot under max_concurrency before its clock starts.
LoadResult run_load(const Dataset& dataset, const LoadOptions& options, size_t limit = 0);

}  // namespace troupe
