// The runtime's KV behaviour and its traces: prefix caching (hits, and the same outputs with it off),
// preemption by recompute in a tiny pool (the same outputs), aborts that free blocks, and traces
// that show overlapping pipeline stages and MoE dispatch/combine on every data-parallel rank.
#include <gtest/gtest.h>
#include <simdjson.h>

#include <chrono>
#include <thread>

#include "tests/runtime_support.hpp"
#include "tests/test_support.hpp"

namespace troupe {
namespace {

std::vector<std::vector<int32_t>> tokens_of(const std::vector<test::Outcome>& outcomes) {
  std::vector<std::vector<int32_t>> out;
  for (const auto& o : outcomes) {
    out.emplace_back();
    for (const TokenOut& t : o.tokens) out.back().push_back(t.token);
  }
  return out;
}

// 12 requests in 3 groups; each group shares a 48-token prefix (three full blocks).
std::vector<test::Job> shared_prefix_jobs() {
  std::mt19937 rng(5);
  std::vector<test::Job> jobs;
  for (int g = 0; g < 3; ++g) {
    std::vector<int32_t> prefix;
    for (int i = 0; i < 48; ++i) prefix.push_back(static_cast<int32_t>(rng() % 512));
    for (int r = 0; r < 4; ++r) {
      test::Job j;
      j.prompt = prefix;
      for (int i = 0; i < 5 + r; ++i) j.prompt.push_back(static_cast<int32_t>(rng() % 512));
      j.params.temperature = 0;
      j.params.max_tokens = 8;
      j.params.ignore_eos = true;
      jobs.push_back(j);
    }
  }
  return jobs;
}

TEST(RuntimeBehaviour, PrefixCacheHitsAndSameOutputsWithCachingOff) {
  const auto jobs = shared_prefix_jobs();
  std::vector<std::vector<int32_t>> with, without;
  uint64_t queries = 0, hits = 0;
  {
    Runtime runtime(test::tiny_options("tiny-qwen3"));
    // The first request of each group fills the cache; the rest arrive after it and hit.
    std::vector<test::Job> firsts, rest;
    for (size_t i = 0; i < jobs.size(); ++i) (i % 4 == 0 ? firsts : rest).push_back(jobs[i]);
    auto a = test::run_jobs(runtime, firsts);
    auto b = test::run_jobs(runtime, rest);
    for (size_t i = 0, f = 0, r = 0; i < jobs.size(); ++i) with.push_back(tokens_of(i % 4 == 0 ? std::vector{a[f++]} : std::vector{b[r++]})[0]);
    RuntimeStats s = runtime.stats();
    queries = s.prefix_queries();
    hits = s.prefix_hits();
    EXPECT_TRUE(s.all_idle());
  }
  {
    RuntimeOptions o = test::tiny_options("tiny-qwen3");
    o.enable_prefix_caching = false;
    Runtime runtime(o);
    without = tokens_of(test::run_jobs(runtime, jobs));
    EXPECT_EQ(runtime.stats().prefix_hits(), 0u);
  }
  std::printf("prefix cache: %llu hits of %llu queried tokens (%.1f%%)\n", static_cast<unsigned long long>(hits),
              static_cast<unsigned long long>(queries), 100.0 * hits / std::max<uint64_t>(1, queries));
  // 9 requests find their group's 48-token prefix: 3 blocks each.
  EXPECT_EQ(hits, 9u * 48u);
  EXPECT_EQ(with, without);
}

TEST(RuntimeBehaviour, TinyPoolForcesPreemptionWithSameOutputs) {
  const auto jobs = test::mixed_jobs(16, 512, 3);
  std::vector<std::vector<int32_t>> roomy, tight;
  {
    Runtime runtime(test::tiny_options("tiny-llama"));
    roomy = tokens_of(test::run_jobs(runtime, jobs));
    EXPECT_EQ(runtime.stats().preemptions(), 0u);
  }
  {
    RuntimeOptions o = test::tiny_options("tiny-llama");
    o.num_blocks_override = 6;  // 96 token slots for 16 sequences of up to 64 tokens
    o.max_model_len = 64;
    Runtime runtime(o);
    tight = tokens_of(test::run_jobs(runtime, jobs));
    RuntimeStats s = runtime.stats();
    std::printf("tiny pool: %llu preemptions\n", static_cast<unsigned long long>(s.preemptions()));
    EXPECT_GT(s.preemptions(), 0u);
    EXPECT_TRUE(s.all_idle());
  }
  EXPECT_EQ(roomy, tight);
}

TEST(RuntimeBehaviour, AbortFreesBlocksAndOthersFinish) {
  RuntimeOptions o = test::tiny_options("tiny-llama", 1, 2);
  Runtime runtime(o);
  std::atomic<int> finished{0}, aborted{0};
  std::vector<uint64_t> ids;
  for (int i = 0; i < 8; ++i) {
    SamplingParams p;
    p.temperature = 0;
    p.max_tokens = i % 2 ? 200 : 4;
    p.ignore_eos = true;
    ids.push_back(runtime.submit({1, 2, 3, static_cast<int32_t>(i)}, p, [&](const RequestEvent& e) {
      if (e.aborted) ++aborted;
      if (e.finish != FinishReason::none) ++finished;
    }));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  for (size_t i = 1; i < ids.size(); i += 2) runtime.abort(ids[i]);
  ASSERT_TRUE(runtime.wait_idle(60));
  EXPECT_EQ(finished.load() + aborted.load(), 8);
  EXPECT_GE(finished.load(), 4);
  EXPECT_GE(aborted.load(), 1) << "no abort landed before its request finished: the test did not test aborts";
  EXPECT_TRUE(runtime.stats().all_idle());
}

struct Span {
  std::string track, name;
  double start, end;
};

std::vector<Span> read_trace(const std::filesystem::path& path) {
  simdjson::dom::parser parser;
  simdjson::dom::element doc = parser.load(path.string());
  std::map<int64_t, std::string> tracks;
  std::vector<Span> spans;
  for (simdjson::dom::element e : doc["traceEvents"].get_array()) {
    const std::string_view ph = e["ph"];
    if (ph == "M") tracks[int64_t(e["tid"])] = std::string(std::string_view(e["args"]["name"]));
  }
  for (simdjson::dom::element e : doc["traceEvents"].get_array()) {
    if (std::string_view(e["ph"]) != "X") continue;
    const double ts = double(int64_t(e["ts"])), dur = double(int64_t(e["dur"]));
    spans.push_back({tracks[int64_t(e["tid"])], std::string(std::string_view(e["name"])), ts, ts + dur});
  }
  return spans;
}

TEST(RuntimeBehaviour, TraceOfPp2ShowsBothStagesBusyAtOnce) {
  const auto path = test::scratch_dir() / "pp2.json";
  {
    RuntimeOptions o = test::tiny_options("tiny-qwen3-moe", 1, 2);
    o.trace_file = path;
    Runtime runtime(o);
    test::run_jobs(runtime, test::mixed_jobs(32, 512, 9));
  }
  const auto spans = read_trace(path);
  std::vector<Span> s0, s1;
  for (const Span& s : spans) {
    if (s.track == "stage dp0 pp0") s0.push_back(s);
    if (s.track == "stage dp0 pp1") s1.push_back(s);
  }
  ASSERT_FALSE(s0.empty());
  ASSERT_FALSE(s1.empty());
  int overlaps = 0;
  for (const Span& a : s0)
    for (const Span& b : s1)
      if (a.start < b.end && b.start < a.end) ++overlaps;
  std::printf("pp2 trace: %zu stage-0 and %zu stage-1 micro-batch spans, %d overlapping pairs\n", s0.size(), s1.size(),
              overlaps);
  EXPECT_GT(overlaps, 0);
}

TEST(RuntimeBehaviour, TraceOfDp2EpShowsDispatchAndCombineOnBothRanks) {
  const auto path = test::scratch_dir() / "dp2ep.json";
  {
    RuntimeOptions o = test::tiny_options("tiny-qwen3-moe", 1, 1, 2, true);
    o.trace_file = path;
    Runtime runtime(o);
    test::run_jobs(runtime, test::mixed_jobs(16, 512, 4));
  }
  std::map<std::string, int> count;
  for (const Span& s : read_trace(path))
    if (s.name == "moe_dispatch" || s.name == "moe_combine") ++count[s.track + " " + s.name];
  for (const char* worker : {"worker r0 (dp0 pp0 tp0)", "worker r1 (dp1 pp0 tp0)"}) {
    EXPECT_GT(count[std::string(worker) + " moe_dispatch"], 0) << worker;
    EXPECT_GT(count[std::string(worker) + " moe_combine"], 0) << worker;
  }
}

}  // namespace
}  // namespace troupe

namespace troupe {
namespace {

double sample(const std::string& page, const std::string& series) {
  const size_t at = page.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::stod(page.substr(at + series.size() + 2));
}

TEST(RuntimeMetrics, CountRequestsTokensLatenciesAndCollectives) {
  RuntimeOptions o = test::tiny_options("tiny-qwen3-moe", 2, 1, 1, true);
  Runtime runtime(o);
  const auto jobs = test::mixed_jobs(8, 512, 17);
  test::run_jobs(runtime, jobs);
  int prompt = 0, generated = 0;
  for (const auto& j : jobs) {
    prompt += static_cast<int>(j.prompt.size());
    generated += *j.params.max_tokens;
  }
  const std::string m = "model_name=\"tiny-qwen3-moe\"";
  // A request's last observation reaches the metrics actor just after its client saw the end: a
  // scrape may lag the client by a moment, so wait for the last request's figures to arrive.
  std::string page = runtime.metrics_text();
  for (int tries = 0; tries < 200 && sample(page, "troupe:e2e_request_latency_seconds_count{" + m + "}") < 8; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    page = runtime.metrics_text();
  }
  EXPECT_EQ(sample(page, "troupe:prompt_tokens_total{" + m + ",dp=\"0\"}"), prompt) << page;
  EXPECT_EQ(sample(page, "troupe:generation_tokens_total{" + m + ",dp=\"0\"}"), generated);
  EXPECT_EQ(sample(page, "troupe:request_success_total{" + m + ",finished_reason=\"length\"}"), 8);
  EXPECT_EQ(sample(page, "troupe:time_to_first_token_seconds_count{" + m + "}"), 8);
  EXPECT_EQ(sample(page, "troupe:e2e_request_latency_seconds_count{" + m + "}"), 8);
  EXPECT_GT(sample(page, "troupe:collective_seconds_count{" + m + ",kind=\"all_reduce\"}"), 0);
  EXPECT_GT(sample(page, "troupe:pipeline_stage_step_seconds_count{" + m + ",dp=\"0\",stage=\"0\"}"), 0);
  EXPECT_NE(page.find("troupe:expert_tokens_total{"), std::string::npos);
  // Every request finished: the gauge is back to its idle value.
  EXPECT_EQ(sample(page, "troupe:kv_cache_usage_perc{" + m + ",dp=\"0\"}"), 0);
}

}  // namespace
}  // namespace troupe
