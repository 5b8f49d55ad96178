// `troupe bench serve` against servers whose truth is known: the real HTTP server in front of an
// engine that emits tokens on a schedule and records when each one left (the truth the client's
// figures must match within 1%), refuses or fails chosen requests, and exports troupe-style metrics
// that move by known amounts; then the command itself against a real `troupe serve` on a tiny model.
// Also the definitions on their own: the SSE stream recorder, percentiles, arrivals, the datasets.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <cmath>
#include <fstream>
#include <numeric>
#include <set>
#include <thread>

#include "net/server.hpp"
#include "tests/fake_engine.hpp"
#include "tests/serve_process.hpp"
#include "tests/test_support.hpp"
#include "tools/bench_client.hpp"
#include "tools/bench_serve.hpp"

namespace troupe::test {
namespace {

namespace json = boost::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

double secs(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// An engine whose tokens leave on a timetable: the first `ttft` after generate() is called, the
// next ones `itl` apart; every emission time is recorded just before the token is handed to the
// server. Prompts count as the fake engine counts them (ids, text bytes, rendered chat bytes), and
// the output repeats the prompt's characters (FakeEngine's rule).
class TimedEngine : public EngineClient {
 public:
  struct Options {
    std::chrono::milliseconds ttft{0}, itl{0};
    std::chrono::milliseconds slow_ttft{0};  // when set: odd-numbered calls wait this long instead of ttft
    int reject_every = 0;                    // every n-th call: 400
    int crash_every = 0;                     // every n-th call not rejected: 500
    int stream_error_every = 0;              // every n-th call neither: an engine error after one token
    int tokens_per_chunk = 1;                // tokens each event (so each SSE chunk) carries
    bool troupe_metrics = false;             // /metrics with troupe: series that move by known amounts
  };
  struct Timeline {
    int call = 0;
    Clock::time_point arrival;
    std::vector<Clock::time_point> emitted;
    int prompt_tokens = 0;
    GenerateRequest request;
  };

  explicit TimedEngine(Options o) : o_(o) {}
  ~TimedEngine() override {
    std::vector<std::thread> threads;
    {
      std::lock_guard lock(mutex_);
      threads.swap(threads_);
    }
    for (auto& t : threads) t.join();
  }

  std::vector<Timeline> timelines() {
    std::lock_guard lock(mutex_);
    return done_;
  }
  int calls() {
    std::lock_guard lock(mutex_);
    return calls_;
  }

  ModelCard model() const override { return {"timed-model", 1 << 20, 1700000000}; }

  uint64_t generate(GenerateRequest request, GenerateListener listener) override {
    const auto arrival = Clock::now();
    std::lock_guard lock(mutex_);
    const int call = ++calls_;
    if (o_.reject_every && call % o_.reject_every == 0) throw RequestError(400, "rejected by the test engine", "prompt");
    if (o_.crash_every && call % o_.crash_every == 0)
      throw RequestError(500, "the test engine crashed", "", "InternalServerError");
    const bool stream_error = o_.stream_error_every && call % o_.stream_error_every == 0;
    const auto ttft = o_.slow_ttft.count() && call % 2 == 1 ? o_.slow_ttft : o_.ttft;
    const int prompt = FakeEngine::prompt_tokens(request);
    ++running_;
    queries_ += prompt;
    hits_ += prompt / 2;
    threads_.emplace_back([this, call, arrival, ttft, prompt, stream_error, request = std::move(request),
                           listener = std::move(listener)] {
      Timeline t{call, arrival, {}, prompt, request};
      const std::vector<std::string> chars = FakeEngine::characters(FakeEngine::source_text(request));
      const int n = request.params.max_tokens.value_or(1);
      for (int k = 0, event = 0; k < n; ++event) {
        std::this_thread::sleep_until(arrival + ttft + event * o_.itl);
        GenerateEvent e;
        for (int j = 0; j < o_.tokens_per_chunk && k < n; ++j, ++k) e.text += chars[static_cast<size_t>(k) % chars.size()];
        if (stream_error || k == n) {
          e.final = true;
          e.finish_reason = stream_error ? "error" : "length";
          e.error = stream_error ? "the test engine failed mid-stream" : "";
          e.prompt_tokens = prompt;
          e.completion_tokens = k;
        }
        t.emitted.push_back(Clock::now());
        if (e.final) {
          // Recorded before the client can hear of the end (and start its next request).
          std::lock_guard lock(mutex_);
          --running_;
          if (!stream_error) done_.push_back(t);
        }
        listener(e);
        if (e.final) break;
      }
    });
    return static_cast<uint64_t>(call);
  }
  void abort(uint64_t) override {}
  void embed(EmbedRequest, EmbedListener) override { throw RequestError(400, "no embeddings here"); }
  std::vector<int32_t> tokenize(const GenerateRequest& r, bool add_special_tokens) override {
    std::vector<int32_t> ids;
    if (add_special_tokens) ids.push_back(1);
    for (unsigned char c : r.prompt_text ? *r.prompt_text : FakeEngine::render_chat(r)) ids.push_back(c);
    return ids;
  }
  std::string detokenize(const std::vector<int32_t>&) override { return ""; }
  // Per call: KV usage = running / 100, prefix queries += prompt and hits += prompt / 2, one
  // "preemption", and a timed step of 40 ms with 10 ms of all-reduce (communication share 25%; the
  // pipeline stage's 50 ms wall time is not the denominator).
  std::string metrics_text() override {
    std::lock_guard lock(mutex_);
    if (!o_.troupe_metrics) return "# TYPE other_metric gauge\nother_metric 1\n";
    const std::string l = "{model_name=\"timed-model\",dp=\"0\"} ";
    const std::string k = "{model_name=\"timed-model\",kind=\"all_reduce\"} ";
    const std::string s = "{model_name=\"timed-model\",dp=\"0\",stage=\"0\"} ";
    return "troupe:kv_cache_usage_perc" + l + std::to_string(running_ / 100.0) + "\n" +
           "troupe:prefix_cache_queries_total" + l + std::to_string(queries_) + "\n" +
           "troupe:prefix_cache_hits_total" + l + std::to_string(hits_) + "\n" +
           "troupe:num_preemptions_total" + l + std::to_string(calls_) + "\n" +
           "troupe:collective_seconds_sum" + k + std::to_string(0.01 * calls_) + "\n" +
           "troupe:collective_seconds_count" + k + std::to_string(calls_) + "\n" +
           "troupe:timed_step_seconds_sum{model_name=\"timed-model\"} " + std::to_string(0.04 * calls_) + "\n" +
           "troupe:timed_step_seconds_count{model_name=\"timed-model\"} " + std::to_string(calls_) + "\n" +
           "troupe:pipeline_stage_step_seconds_sum" + s + std::to_string(0.05 * calls_) + "\n" +
           "troupe:pipeline_stage_step_seconds_count" + s + std::to_string(calls_) + "\n";
  }
  bool healthy() override { return true; }

 private:
  Options o_;
  std::mutex mutex_;
  std::vector<std::thread> threads_;
  std::vector<Timeline> done_;
  int calls_ = 0, running_ = 0;
  long long queries_ = 0, hits_ = 0;
};

struct TimedServer {
  TimedEngine engine;
  net::Server server;
  explicit TimedServer(TimedEngine::Options o) : engine(o), server(engine, options()) { server.start(); }
  static net::ServerOptions options() {
    net::ServerOptions o;
    o.host = "127.0.0.1";
    o.port = 0;
    return o;
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(server.port()); }
};

BenchServeOptions bench_options(const std::string& url, int prompts, int input_len, int output_len) {
  BenchServeOptions o;
  o.base_url = url;
  o.dataset.num_prompts = prompts;
  o.dataset.input_len = input_len;
  o.dataset.output_len = output_len;
  o.ignore_eos = true;
  return o;
}

double mean(const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0) / v.size(); }
double median(std::vector<double> v) { return percentile(std::move(v), 50); }

void expect_within_1pct(double measured, double truth, const char* what) {
  EXPECT_NEAR(measured, truth, 0.01 * std::fabs(truth)) << what << ": measured " << measured << ", truth " << truth;
}

// ---- against an engine with a known timetable ----------------------------------------------------

TEST(BenchServe, EveryFigureMatchesTheServersTimetableWithinOnePercent) {
  TimedServer s({.ttft = 600ms, .itl = 50ms});
  BenchServeOptions o = bench_options(s.url(), 30, 16, 8);
  // Poisson arrivals, so that requests do not start and end in lockstep: the client and the server
  // then never have a burst of work that delays one request's chunks behind another's.
  o.request_rate = 15;
  o.num_warmups = 2;
  o.result_file = (scratch_dir() / "result.json").string();
  const BenchResult r = run_bench_serve(o);

  // The truth, from the engine's own clock readings (the warm-ups were its first two calls).
  std::vector<TimedEngine::Timeline> timelines = s.engine.timelines();
  std::erase_if(timelines, [](const auto& t) { return t.call <= 2; });
  ASSERT_EQ(timelines.size(), 30u);
  std::vector<double> ttft, itl, tpot, e2el;
  Clock::time_point first = timelines[0].arrival, last = timelines[0].emitted.back();
  for (const auto& t : timelines) {
    ASSERT_EQ(t.emitted.size(), 8u);
    ttft.push_back(secs(t.emitted.front() - t.arrival));
    e2el.push_back(secs(t.emitted.back() - t.arrival));
    for (size_t k = 1; k < t.emitted.size(); ++k) itl.push_back(secs(t.emitted[k] - t.emitted[k - 1]));
    tpot.push_back((e2el.back() - ttft.back()) / 7);
    first = std::min(first, t.arrival);
    last = std::max(last, t.emitted.back());
  }
  EXPECT_EQ(r.completed, 30);
  EXPECT_EQ(r.failed, 0);
  EXPECT_EQ(r.total_input_tokens, 30 * 16);
  EXPECT_EQ(r.total_output_tokens, 30 * 8);
  expect_within_1pct(r.ttft.mean, mean(ttft), "mean TTFT");
  expect_within_1pct(r.ttft.median, median(ttft), "median TTFT");
  expect_within_1pct(r.itl.mean, mean(itl), "mean ITL");
  expect_within_1pct(r.tpot.mean, mean(tpot), "mean TPOT");
  expect_within_1pct(r.tpot.median, median(tpot), "median TPOT");
  expect_within_1pct(r.e2el.mean, mean(e2el), "mean E2EL");
  expect_within_1pct(r.e2el.median, median(e2el), "median E2EL");
  const double duration = secs(last - first);
  expect_within_1pct(r.duration_s, duration, "duration");
  expect_within_1pct(r.request_throughput, 30 / duration, "request throughput");
  expect_within_1pct(r.output_throughput, 30 * 8 / duration, "output token throughput");
  expect_within_1pct(r.total_token_throughput, 30 * 24 / duration, "total token throughput");
  // Not a troupe server: its page has no troupe: series.
  EXPECT_FALSE(r.server.troupe);
  const std::string report = format_report(r);
  EXPECT_NE(report.find("============ Serving Benchmark Result ============"), std::string::npos) << report;
  EXPECT_NE(report.find("Mean TTFT (ms):"), std::string::npos) << report;
  EXPECT_NE(report.find("n/a (no troupe: metrics at /metrics)"), std::string::npos) << report;

  // The result file: the summary under vLLM's names, the per-request arrays in dataset order.
  std::ifstream in(o.result_file);
  const json::object f = json::parse(std::string(std::istreambuf_iterator<char>(in), {})).as_object();
  EXPECT_EQ(f.at("completed"), 30);
  EXPECT_EQ(f.at("failed"), 0);
  EXPECT_EQ(f.at("total_output_tokens"), 240);
  EXPECT_EQ(f.at("request_rate"), 15.0);
  EXPECT_TRUE(f.at("max_concurrency").is_null());
  EXPECT_EQ(f.at("dataset"), "random");
  EXPECT_EQ(f.at("endpoint"), "/v1/completions");
  EXPECT_EQ(f.at("model_id"), "timed-model");  // from /v1/models
  EXPECT_DOUBLE_EQ(f.at("mean_ttft_ms").as_double(), r.ttft.mean * 1e3);
  EXPECT_DOUBLE_EQ(f.at("p99_itl_ms").as_double(), r.itl.p99 * 1e3);
  EXPECT_DOUBLE_EQ(f.at("median_e2el_ms").as_double(), r.e2el.median * 1e3);
  EXPECT_DOUBLE_EQ(f.at("request_throughput").as_double(), r.request_throughput);
  for (const char* key : {"std_tpot_ms", "p90_ttft_ms", "output_throughput", "total_token_throughput", "duration",
                          "request_goodput", "failures", "server", "goodput_slos_ms"})
    EXPECT_TRUE(f.contains(key)) << key;
  for (const char* key : {"input_lens", "output_lens", "ttfts", "itls", "e2els", "tpots", "start_times", "success",
                          "errors", "generated_texts"}) {
    ASSERT_TRUE(f.contains(key)) << key;
    EXPECT_EQ(f.at(key).as_array().size(), 30u) << key;
  }
  for (size_t i = 0; i < 30; ++i) {
    EXPECT_EQ(f.at("output_lens").at(i), 8);
    EXPECT_EQ(f.at("input_lens").at(i), 16);
    EXPECT_EQ(f.at("itls").at(i).as_array().size(), 7u);
    EXPECT_EQ(f.at("errors").at(i), "");
    EXPECT_DOUBLE_EQ(f.at("ttfts").at(i).as_double(), r.requests[i].measure.ttft);
  }
}

TEST(BenchServe, FailuresAreCountedByReason) {
  // Two tokens a chunk: output tokens come from the usage chunk, not from counting chunks.
  TimedServer s({.reject_every = 5, .crash_every = 7, .stream_error_every = 11, .tokens_per_chunk = 2});
  BenchServeOptions o = bench_options(s.url(), 35, 8, 4);
  o.model = "timed-model";
  const BenchResult r = run_bench_serve(o);
  // Calls 5, 10, ..., 35 are refused; 7, 14, 21, 28 crash; 11, 22, 33 fail after their first token.
  EXPECT_EQ(r.failed, 14);
  EXPECT_EQ(r.completed, 21);
  const std::map<std::string, int> expected{
      {"HTTP 400: rejected by the test engine", 7},
      {"HTTP 500: the test engine crashed", 4},
      {"stream error: the test engine failed mid-stream", 3}};
  EXPECT_EQ(r.failures, expected);
  EXPECT_EQ(r.total_output_tokens, 21 * 4);  // failed requests count no tokens
  for (const RequestRecord& q : r.requests) {
    if (q.measure.ok) {
      EXPECT_EQ(q.measure.token_chunks, 2);
    }
  }
  EXPECT_NE(format_report(r).find("     7  HTTP 400: rejected by the test engine"), std::string::npos) << format_report(r);

  // Nothing listens: every request is a connection error.
  uint16_t closed_port;
  {
    TimedServer gone({});
    closed_port = gone.server.port();
  }
  BenchServeOptions c = bench_options("http://127.0.0.1:" + std::to_string(closed_port), 3, 8, 4);
  c.model = "m";
  const BenchResult refused = run_bench_serve(c);
  EXPECT_EQ(refused.failed, 3);
  ASSERT_EQ(refused.failures.size(), 1u);
  EXPECT_EQ(refused.failures.begin()->first, "connection error: Connection refused");

  // A server slower than the timeout.
  TimedServer slow({.ttft = 400ms});
  BenchServeOptions t = bench_options(slow.url(), 3, 8, 2);
  t.timeout_s = 0.1;
  const BenchResult timed_out = run_bench_serve(t);
  EXPECT_EQ(timed_out.failures, (std::map<std::string, int>{{"timeout", 3}}));
}

TEST(BenchServe, GoodputCountsRequestsMeetingEverySlo) {
  // Odd calls answer after 250 ms, even ones after 20 ms; every later token 10 ms apart.
  TimedServer s({.ttft = 20ms, .itl = 10ms, .slow_ttft = 250ms});
  BenchServeOptions o = bench_options(s.url(), 20, 8, 5);
  o.max_concurrency = 4;
  o.slo.ttft_ms = 150;
  o.slo.tpot_ms = 200;
  BenchResult r = run_bench_serve(o);
  ASSERT_EQ(r.completed, 20);
  EXPECT_EQ(r.peak_concurrency, 4);
  ASSERT_TRUE(r.request_goodput);
  EXPECT_DOUBLE_EQ(*r.request_goodput, 10 / r.duration_s);  // exactly the fast half
  EXPECT_NE(format_report(r).find("Request goodput (req/s):"), std::string::npos);

  // The same records against other SLOs: a TPOT limit no request meets, an E2EL limit all meet.
  LoadResult load;
  load.requests = r.requests;
  load.duration_s = r.duration_s;
  BenchResult tight;
  tight.slo.tpot_ms = 1;
  summarize(tight, load);
  EXPECT_DOUBLE_EQ(*tight.request_goodput, 0.0);
  BenchResult loose;
  loose.slo.e2el_ms = 10000;
  summarize(loose, load);
  EXPECT_DOUBLE_EQ(*loose.request_goodput, 20 / r.duration_s);
  BenchResult none;
  summarize(none, load);
  EXPECT_FALSE(none.request_goodput);
}

TEST(BenchServe, ReadsTroupeMetricsAroundTheRun) {
  TimedServer s({.ttft = 100ms, .itl = 20ms, .troupe_metrics = true});
  BenchServeOptions o = bench_options(s.url(), 40, 10, 6);
  o.max_concurrency = 10;
  o.num_warmups = 3;  // before the first reading: not in the deltas
  o.metrics_interval = 50ms;
  const BenchResult r = run_bench_serve(o);
  ASSERT_TRUE(r.server.troupe);
  EXPECT_GE(r.server.readings, 4);
  ASSERT_TRUE(r.server.kv_usage_peak);
  EXPECT_DOUBLE_EQ(*r.server.kv_usage_peak, 0.10);  // ten running
  EXPECT_DOUBLE_EQ(r.server.prefix_queries, 400);
  EXPECT_DOUBLE_EQ(*r.server.prefix_hit_rate, 0.5);
  EXPECT_DOUBLE_EQ(r.server.preemptions, 40);
  ASSERT_TRUE(r.server.communication_share);
  EXPECT_NEAR(*r.server.communication_share, 0.25, 1e-9);
  EXPECT_NEAR(r.server.collective_seconds_per_step().at("all_reduce"), 0.01, 1e-9);
  const std::string report = format_report(r);
  EXPECT_NE(report.find("KV cache usage peak (%):                 10.00"), std::string::npos) << report;
  EXPECT_NE(report.find("Prefix cache hit rate (%):               50.00"), std::string::npos) << report;
  EXPECT_NE(report.find("Communication share (%):                 25.00"), std::string::npos) << report;
}

// ---- datasets ----------------------------------------------------------------------------------

TEST(BenchServe, SharedPrefixPromptsHaveTheRequestedLengthsAndPrefixes) {
  TimedServer s({});
  BenchServeOptions o = bench_options(s.url(), 12, 10, 3);
  o.dataset.kind = DatasetKind::shared_prefix;
  o.dataset.prefix_groups = 3;
  o.dataset.prefix_len = 20;
  o.dataset.range_ratio = 0.5;
  BenchResult r = run_bench_serve(o);
  ASSERT_EQ(r.completed, 12);
  std::map<std::vector<int32_t>, int> prefixes;
  for (const auto& t : s.engine.timelines()) {
    const std::vector<int32_t>& ids = *t.request.prompt_ids;
    EXPECT_GE(ids.size(), 20u + 5);
    EXPECT_LE(ids.size(), 20u + 15);
    ++prefixes[std::vector<int32_t>(ids.begin(), ids.begin() + 20)];
  }
  EXPECT_EQ(prefixes.size(), 3u);
  for (const auto& [prefix, n] : prefixes) EXPECT_EQ(n, 4);
  // Output lengths follow the range ratio too: [1, 5] around 3, each run to its max_tokens.
  long long max_tokens = 0;
  for (const auto& t : s.engine.timelines()) max_tokens += *t.request.params.max_tokens;
  EXPECT_EQ(r.total_output_tokens, max_tokens);
  for (const RequestRecord& q : r.requests) {
    EXPECT_GE(q.output_tokens, 1);
    EXPECT_LE(q.output_tokens, 5);
  }

  // Text: the server's tokenizer (here one token per byte) counts exactly the requested lengths.
  TimedServer t({});
  o = bench_options(t.url(), 6, 13, 2);
  o.dataset.kind = DatasetKind::shared_prefix;
  o.dataset.format = PromptFormat::text;
  o.dataset.prefix_groups = 2;
  o.dataset.prefix_len = 31;
  r = run_bench_serve(o);
  ASSERT_EQ(r.completed, 6);
  std::map<std::string, int> text_prefixes;
  for (const auto& tl : t.engine.timelines()) {
    EXPECT_EQ(tl.request.prompt_text->size(), 31u + 13) << *tl.request.prompt_text;
    ++text_prefixes[tl.request.prompt_text->substr(0, 31)];
  }
  EXPECT_EQ(text_prefixes.size(), 2u);
  for (const RequestRecord& q : r.requests) EXPECT_EQ(q.input_tokens, 44);
}

TEST(BenchServe, MultiTurnChatsCarryTheirRepliesAndRequestedLengths) {
  TimedServer s({});
  BenchServeOptions o = bench_options(s.url(), 7, 12, 5);
  o.dataset.kind = DatasetKind::multi_turn;
  o.dataset.turns = 3;
  const BenchResult r = run_bench_serve(o);
  ASSERT_EQ(r.completed, 7);
  // Chats of 3, 3 and 1 turns: turn k sends 2k+1 messages, user turns of 12 tokens (bytes), and the
  // assistant messages are the replies the server streamed (the fake repeats the user's characters).
  std::map<int, int> by_messages;
  for (const auto& t : s.engine.timelines()) {
    const json::array messages = json::parse(*t.request.messages_json).as_array();
    ++by_messages[static_cast<int>(messages.size())];
    for (size_t k = 0; k < messages.size(); ++k) {
      const std::string content(messages[k].at("content").as_string());
      if (k % 2 == 0) {
        EXPECT_EQ(messages[k].at("role"), "user");
        EXPECT_EQ(content.size(), 12u) << content;
      } else {
        EXPECT_EQ(messages[k].at("role"), "assistant");
        EXPECT_EQ(content, std::string(messages[k - 1].at("content").as_string()).substr(0, 5));
      }
    }
  }
  EXPECT_EQ(by_messages, (std::map<int, int>{{1, 3}, {3, 2}, {5, 2}}));
  ASSERT_EQ(r.requests.size(), 7u);
  for (const RequestRecord& q : r.requests) {
    EXPECT_EQ(q.output_tokens, 5);
    // The server's count of the whole chat: "<|user|>" + 12 + ("<|assistant|>" + 5 + "<|user|>" + 12)
    // per earlier turn + "<|assistant|>".
    EXPECT_EQ(q.input_tokens, 8 + 12 + q.turn * (13 + 5 + 8 + 12) + 13) << q.conversation << "/" << q.turn;
  }
}

TEST(BenchServe, DatasetLengthsFollowTheRangeRatio) {
  DatasetOptions d;
  d.num_prompts = 2000;
  d.input_len = 100;
  d.output_len = 10;
  d.range_ratio = 0.25;
  const Dataset ds = make_dataset(d, {});
  std::set<int> inputs, outputs;
  for (const Conversation& c : ds.conversations) {
    inputs.insert(static_cast<int>(c.turns[0].ids.size()));
    outputs.insert(c.turns[0].output_len);
    for (int32_t id : c.turns[0].ids) ASSERT_TRUE(id >= 0 && id < 10000);
  }
  EXPECT_EQ(*inputs.begin(), 75);
  EXPECT_EQ(*inputs.rbegin(), 125);
  EXPECT_EQ(inputs.size(), 51u);
  EXPECT_EQ(*outputs.begin(), 7);  // floor(7.5)
  EXPECT_EQ(*outputs.rbegin(), 13);  // ceil(12.5)
  // The same seed, the same prompts; another seed, others.
  EXPECT_EQ(make_dataset(d, {}).conversations[5].turns[0].ids, ds.conversations[5].turns[0].ids);
  d.seed = 1;
  EXPECT_NE(make_dataset(d, {}).conversations[5].turns[0].ids, ds.conversations[5].turns[0].ids);
  // Text without a tokenizer: words, counted as one token each.
  d.format = PromptFormat::text;
  d.num_prompts = 3;
  d.range_ratio = 0;
  const Dataset words = make_dataset(d, [](const std::string&) { return std::nullopt; });
  EXPECT_FALSE(words.lengths_counted);
  const std::string& text = words.conversations[0].turns[0].text;
  EXPECT_EQ(std::count(text.begin(), text.end(), ' '), 99);
}

// ---- the definitions on their own ---------------------------------------------------------------

TEST(BenchServe, StreamRecorderMeasuresAsDefined) {
  const Clock::time_point t0{};
  auto at = [&](int ms) { return t0 + std::chrono::milliseconds(ms); };
  {
    // Chat: the role chunk is no token; a finish-only chunk ends E2EL but is no ITL gap.
    StreamRecorder rec(t0);
    rec.feed("data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n", at(5));
    rec.feed("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"He\"}}]}\n\n", at(100));
    rec.feed("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"llo\"}}]}\r\n", at(120));
    rec.feed("\r\n", at(130));  // an event counts when its blank line arrives
    rec.feed("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"}}]}\n\ndata: {\"choices\":[{\"index\":0,"
             "\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n", at(180));
    rec.feed("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n", at(190));
    const StreamMeasure m = rec.finish();
    EXPECT_TRUE(m.ok) << m.error;
    EXPECT_DOUBLE_EQ(m.ttft, 0.100);
    EXPECT_DOUBLE_EQ(m.e2el, 0.180);
    ASSERT_EQ(m.itl.size(), 2u);
    EXPECT_DOUBLE_EQ(m.itl[0], 0.030);
    EXPECT_DOUBLE_EQ(m.itl[1], 0.050);
    EXPECT_EQ(m.token_chunks, 3);
    EXPECT_EQ(m.usage_completion_tokens, 4);
    EXPECT_EQ(m.usage_prompt_tokens, 7);
    EXPECT_EQ(m.text, "Hello!");
  }
  {
    // Completions without usage: the chunks are the count; a connection lost after them fails it.
    StreamRecorder rec(t0);
    rec.feed("data: {\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\ndata: {\"choices\":[{\"index\":0,\"text\":\"b\"}]}\n\n", at(20));
    StreamMeasure m = rec.finish();
    EXPECT_TRUE(m.ok);
    EXPECT_EQ(m.token_chunks, 2);
    EXPECT_FALSE(m.usage_completion_tokens);
    EXPECT_EQ(m.itl, std::vector<double>{0.0});
    StreamRecorder lost(t0);
    lost.feed("data: {\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\n", at(20));
    m = lost.finish("connection error: end of stream");
    EXPECT_FALSE(m.ok);
    EXPECT_EQ(m.error, "connection error: end of stream");
  }
  {
    StreamRecorder rec(t0);
    rec.feed("data: {\"error\": {\"message\": \"boom\", \"code\": 500}}\n\ndata: [DONE]\n\n", at(1));
    EXPECT_EQ(rec.finish().error, "stream error: boom");
    StreamRecorder empty(t0);
    empty.feed("data: [DONE]\n\n", at(1));
    EXPECT_EQ(empty.finish().error, "no output token in the stream");
  }
}

TEST(BenchServe, PercentilesInterpolateLinearlyAsNumpy) {
  const std::vector<double> v{4, 1, 3, 2};
  EXPECT_DOUBLE_EQ(percentile(v, 50), 2.5);
  EXPECT_DOUBLE_EQ(percentile(v, 90), 3.7);
  EXPECT_DOUBLE_EQ(percentile(v, 99), 3.97);
  EXPECT_DOUBLE_EQ(percentile(v, 0), 1);
  EXPECT_DOUBLE_EQ(percentile(v, 100), 4);
  EXPECT_DOUBLE_EQ(percentile({}, 50), 0);
  const Distribution d = distribution(v);
  EXPECT_DOUBLE_EQ(d.mean, 2.5);
  EXPECT_DOUBLE_EQ(d.std, std::sqrt(1.25));
  EXPECT_DOUBLE_EQ(d.p90, 3.7);
}

TEST(BenchServe, ArrivalsArePoissonOrGammaAtTheRequestedRate) {
  auto moments = [](const std::vector<double>& t) {
    std::vector<double> gaps;
    for (size_t i = 1; i < t.size(); ++i) gaps.push_back(t[i] - t[i - 1]);
    const Distribution d = distribution(gaps);
    return std::pair{d.mean, d.std / d.mean};
  };
  const std::vector<double> poisson = arrival_offsets(20000, 50.0, 1.0, 3);
  EXPECT_EQ(poisson[0], 0.0);
  auto [gap, cv] = moments(poisson);
  EXPECT_NEAR(gap, 0.02, 0.02 * 0.03);
  EXPECT_NEAR(cv, 1.0, 0.05);  // exponential gaps
  std::tie(gap, cv) = moments(arrival_offsets(20000, 50.0, 0.25, 3));
  EXPECT_NEAR(gap, 0.02, 0.02 * 0.05);
  EXPECT_NEAR(cv, 2.0, 0.1);  // gamma with shape 1/4: CV = 1/sqrt(shape)
  EXPECT_EQ(arrival_offsets(5, std::numeric_limits<double>::infinity(), 1.0, 0), std::vector<double>(5, 0.0));
  EXPECT_EQ(arrival_offsets(100, 50.0, 1.0, 9), arrival_offsets(100, 50.0, 1.0, 9));
}

TEST(BenchServe, BadFlagsExitTwoNamingTheFlag) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases{
      {{}, "--base-url"},
      {{"--base-url", "https://x:1"}, "--base-url"},
      {{"--base-url", "http://x:99999"}, "--base-url"},
      {{"--base-url", "http://x:1", "--input-len", "0"}, "--input-len"},
      {{"--base-url", "http://x:1", "--output-len", "abc"}, "--output-len"},
      {{"--base-url", "http://x:1", "--range-ratio", "1"}, "--range-ratio"},
      {{"--base-url", "http://x:1", "--request-rate=-2"}, "--request-rate"},
      {{"--base-url", "http://x:1", "--burstiness", "0"}, "--burstiness"},
      {{"--base-url", "http://x:1", "--goodput", "ttft:500", "itl:3"}, "--goodput"},
      {{"--base-url", "http://x:1", "--goodput", "ttft:fast"}, "--goodput"},
      {{"--base-url", "http://x:1", "--dataset", "sharegpt"}, "--dataset"},
      {{"--base-url", "http://x:1", "--dataset", "multi-turn", "--prompt-format", "ids"}, "--prompt-format"},
      {{"--base-url", "http://x:1", "--prompt-format", "bytes"}, "--prompt-format"},
      {{"--base-url", "http://x:1", "--max-concurrency=-1"}, "--max-concurrency"},
      {{"--base-url", "http://x:1", "--frobnicate"}, "--frobnicate"},
  };
  for (const auto& [args, flag] : cases) {
    std::vector<std::string> all{"serve"};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    testing::internal::CaptureStderr();
    const int rc = bench_serve_command(static_cast<int>(argv.size()), argv.data());
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_EQ(rc, 2) << flag << ": " << err;
    EXPECT_NE(err.find(flag), std::string::npos) << flag << ": " << err;
  }
}

// ---- the command against a real troupe serve ----------------------------------------------------

TEST(BenchServe, CommandReportsTroupesKvPeakAndPrefixHitsFromARealServer) {
  const std::vector<std::string> args{"--model", tiny_model("tiny-qwen3-chat").string(), "--port", "0",
                                      "--served-model-name", "tiny", "--http-threads", "2", "--max-model-len", "256"};
  ServeProcess server(args, scratch_dir("serve") / "stderr.log");
  const int port = server.wait_ready(120000);
  ASSERT_NE(port, 0) << server.errors();
  const std::string result = (scratch_dir("bench") / "result.json").string();
  const std::string out = (scratch_dir("out") / "stdout.txt").string();
  const std::string cmd = (binary_dir() / "troupe").string() + " bench serve --base-url http://127.0.0.1:" +
                          std::to_string(port) + " --dataset shared-prefix --prefix-groups 2 --prefix-len 64" +
                          " --input-len 16 --output-len 8 --num-prompts 16 --max-concurrency 2 --ignore-eos" +
                          " --metrics-interval 50 --result-file " + result + " > " + out + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream report_in(out);
  const std::string report(std::istreambuf_iterator<char>(report_in), {});
  EXPECT_NE(report.find("============ Serving Benchmark Result ============"), std::string::npos) << report;
  EXPECT_NE(report.find("KV cache usage peak (%):"), std::string::npos) << report;
  EXPECT_EQ(report.find('\r'), std::string::npos) << "a progress bar in a log: " << report;

  std::ifstream in(result);
  const json::object f = json::parse(std::string(std::istreambuf_iterator<char>(in), {})).as_object();
  EXPECT_EQ(f.at("model_id"), "tiny");
  EXPECT_EQ(f.at("completed"), 16) << report;
  EXPECT_EQ(f.at("total_output_tokens"), 16 * 8);
  EXPECT_EQ(f.at("total_input_tokens"), 16 * 80);
  const json::object& s = f.at("server").as_object();
  EXPECT_EQ(s.at("troupe"), true);
  EXPECT_GT(s.at("kv_cache_usage_peak").as_double(), 0.0) << report;
  // Two requests at a time over two prefixes of 4 full blocks: all but the first of each group (and
  // any that ran beside it) find their prefix cached.
  EXPECT_GT(s.at("prefix_cache_hit_rate").as_double(), 0.4) << report;
  EXPECT_LE(s.at("prefix_cache_hit_rate").as_double(), 64.0 / 80.0) << report;
  EXPECT_EQ(s.at("preemptions").as_double(), 0.0);
  EXPECT_TRUE(s.at("communication_share").is_null());  // one device: no collectives
  EXPECT_NE(report.find("Communication share (%):                 n/a"), std::string::npos) << report;
}

}  // namespace
}  // namespace troupe::test
