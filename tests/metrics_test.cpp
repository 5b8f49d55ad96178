// The metrics registry's exposition format, what each metrics event does to which series, the
// metrics actor's protocol, and promtool's verdict on a page with every family populated.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "actors/metrics.hpp"
#include "actors/metrics_registry.hpp"
#include "tests/test_support.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;

// The value of the sample whose name and labels are exactly `series` (e.g. `x{a="b"}`), if present.
std::optional<double> sample(const std::string& page, const std::string& series) {
  std::istringstream in(page);
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 && line[series.size()] == ' ')
      return std::stod(line.substr(series.size() + 1));
  }
  return std::nullopt;
}

// Shorthand for a series of model "m" with extra labels, e.g. m_series("troupe:x", "dp=\"0\"").
std::string m_series(const std::string& name, const std::string& extra = "") {
  return name + "{model_name=\"m\"" + (extra.empty() ? "" : "," + extra) + "}";
}

double value_of(const std::string& page, const std::string& series) {
  std::optional<double> v = sample(page, series);
  EXPECT_TRUE(v.has_value()) << "no sample " << series << " in\n" << page;
  return v.value_or(std::numeric_limits<double>::quiet_NaN());
}

// ---- The registry and the text format ----------------------------------------------------------

TEST(MetricsRegistry, RendersCountersWithLabelsInLabelOrder) {
  MetricsRegistry r;
  CounterFamily& c = r.counter("http_requests_total", "Requests handled.", {"method", "code"});
  c.with({"post", "200"}).inc();
  c.with({"post", "200"}).inc(2);
  c.with({"get", "404"}).inc(0.5);
  EXPECT_EQ(r.render(),
            "# HELP http_requests_total Requests handled.\n"
            "# TYPE http_requests_total counter\n"
            "http_requests_total{method=\"get\",code=\"404\"} 0.5\n"
            "http_requests_total{method=\"post\",code=\"200\"} 3\n");
  EXPECT_EQ(c.with({"post", "200"}).value(), 3.0);
  EXPECT_EQ(c.size(), 2u);
}

TEST(MetricsRegistry, RendersGaugesWithoutLabelsAndFamiliesInRegistrationOrder) {
  MetricsRegistry r;
  GaugeFamily& z = r.gauge("z_depth", "Depth.");
  GaugeFamily& a = r.gauge("a_ratio", "Ratio.");
  r.gauge("m_unused", "Never set.");
  z.with({}).set(0.25);
  z.with({}).add(-1);
  a.with({}).set(1e21);
  EXPECT_EQ(r.render(),
            "# HELP z_depth Depth.\n"
            "# TYPE z_depth gauge\n"
            "z_depth -0.75\n"
            "# HELP a_ratio Ratio.\n"
            "# TYPE a_ratio gauge\n"
            "a_ratio 1e+21\n"
            "# HELP m_unused Never set.\n"
            "# TYPE m_unused gauge\n");
}

TEST(MetricsRegistry, RendersHistogramBucketsCumulativelyWithInfSumAndCount) {
  MetricsRegistry r;
  HistogramFamily& h = r.histogram("step_seconds", "Step time.", {"stage"}, {0.5, 1, 2.5});
  Histogram& s0 = h.with({"0"});
  for (double v : {0.25, 0.5, 1.0, 3.0}) s0.observe(v);  // 0.5 and 1 sit on bounds: le is inclusive
  h.with({"1"});
  EXPECT_EQ(r.render(),
            "# HELP step_seconds Step time.\n"
            "# TYPE step_seconds histogram\n"
            "step_seconds_bucket{stage=\"0\",le=\"0.5\"} 2\n"
            "step_seconds_bucket{stage=\"0\",le=\"1\"} 3\n"
            "step_seconds_bucket{stage=\"0\",le=\"2.5\"} 3\n"
            "step_seconds_bucket{stage=\"0\",le=\"+Inf\"} 4\n"
            "step_seconds_sum{stage=\"0\"} 4.75\n"
            "step_seconds_count{stage=\"0\"} 4\n"
            "step_seconds_bucket{stage=\"1\",le=\"0.5\"} 0\n"
            "step_seconds_bucket{stage=\"1\",le=\"1\"} 0\n"
            "step_seconds_bucket{stage=\"1\",le=\"2.5\"} 0\n"
            "step_seconds_bucket{stage=\"1\",le=\"+Inf\"} 0\n"
            "step_seconds_sum{stage=\"1\"} 0\n"
            "step_seconds_count{stage=\"1\"} 0\n");
  EXPECT_EQ(s0.cumulative(), (std::vector<uint64_t>{2, 3, 3, 4}));
  EXPECT_EQ(s0.count(), 4u);
  EXPECT_EQ(s0.sum(), 4.75);
}

TEST(MetricsRegistry, RendersUnlabelledHistogramWithLeOnly) {
  MetricsRegistry r;
  r.histogram("tokens", "Tokens.", {}, {8}).with({}).observe(9);
  EXPECT_EQ(r.render(),
            "# HELP tokens Tokens.\n"
            "# TYPE tokens histogram\n"
            "tokens_bucket{le=\"8\"} 0\n"
            "tokens_bucket{le=\"+Inf\"} 1\n"
            "tokens_sum 9\n"
            "tokens_count 1\n");
}

TEST(MetricsRegistry, EscapesLabelValuesAndHelp) {
  MetricsRegistry r;
  r.counter("odd_total", "Path C:\\models \"q\"\nsecond line", {"model_name"})
      .with({"a\\b\"c\nd"})
      .inc();
  EXPECT_EQ(r.render(),
            "# HELP odd_total Path C:\\\\models \"q\"\\nsecond line\n"
            "# TYPE odd_total counter\n"
            "odd_total{model_name=\"a\\\\b\\\"c\\nd\"} 1\n");
  EXPECT_EQ(escape_label_value("plain ünïcode"), "plain ünïcode");
}

TEST(MetricsRegistry, FormatsValuesAsPrometheusReadsThem) {
  EXPECT_EQ(format_metric_value(0.1), "0.1");
  EXPECT_EQ(format_metric_value(3.0), "3");
  EXPECT_EQ(format_metric_value(12345678.0), "12345678");
  EXPECT_EQ(format_metric_value(-0.75), "-0.75");
  EXPECT_EQ(format_metric_value(0.0005), "0.0005");
  EXPECT_EQ(format_metric_value(1e-5), "0.00001");
  EXPECT_EQ(format_metric_value(1e-7), "1e-07");
  EXPECT_EQ(format_metric_value(1e6), "1000000");
  EXPECT_EQ(format_metric_value(0.0), "0");
  EXPECT_EQ(format_metric_value(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(format_metric_value(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(format_metric_value(std::nan("")), "NaN");
  // Round trip: what is printed reads back as the same double.
  EXPECT_EQ(std::stod(format_metric_value(0.1 + 0.2)), 0.1 + 0.2);
}

TEST(MetricsRegistry, RefusesWhatPrometheusWouldReject) {
  MetricsRegistry r;
  EXPECT_THROW(r.counter("", "x"), std::invalid_argument);
  EXPECT_THROW(r.counter("1abc_total", "x"), std::invalid_argument);
  EXPECT_THROW(r.counter("a-b_total", "x"), std::invalid_argument);
  EXPECT_THROW(r.counter("a b_total", "x"), std::invalid_argument);
  EXPECT_NO_THROW(r.counter("troupe:ok_total", "colons are legal in metric names"));
  EXPECT_THROW(r.counter("l1_total", "x", {"__reserved"}), std::invalid_argument);
  EXPECT_THROW(r.counter("l2_total", "x", {"a:b"}), std::invalid_argument);
  EXPECT_THROW(r.counter("l3_total", "x", {"9a"}), std::invalid_argument);
  EXPECT_THROW(r.counter("l4_total", "x", {"dp", "dp"}), std::invalid_argument);
  EXPECT_THROW(r.histogram("h1", "x", {"le"}, {1}), std::invalid_argument);
  EXPECT_THROW(r.histogram("h2", "x", {}, {1, 1}), std::invalid_argument);
  EXPECT_THROW(r.histogram("h3", "x", {}, {2, 1}), std::invalid_argument);
  EXPECT_THROW(r.histogram("h4", "x", {}, {1, std::numeric_limits<double>::infinity()}), std::invalid_argument);
  EXPECT_NO_THROW(r.counter("le_is_fine_on_a_counter_total", "x", {"le"}));

  // No two families may render a sample of the same name, whichever comes first.
  r.histogram("lat", "x", {}, {1});
  EXPECT_THROW(r.counter("troupe:ok_total", "again"), std::invalid_argument);
  EXPECT_THROW(r.gauge("lat", "x"), std::invalid_argument);
  EXPECT_THROW(r.counter("lat_count", "x"), std::invalid_argument);
  EXPECT_THROW(r.gauge("lat_bucket", "x"), std::invalid_argument);
  r.gauge("wait_sum", "x");
  EXPECT_THROW(r.histogram("wait", "x", {}, {1}), std::invalid_argument);
  // The refused registrations left nothing behind.
  EXPECT_EQ(r.render().find("wait_bucket"), std::string::npos);
}

TEST(MetricsRegistry, ChecksSeriesAndValues) {
  MetricsRegistry r;
  CounterFamily& c = r.counter("c_total", "x", {"a", "b"});
  EXPECT_THROW(c.with({"only one"}), std::invalid_argument);
  EXPECT_EQ(c.find({"x", "y"}), nullptr);
  Counter& xy = c.with({"x", "y"});
  EXPECT_EQ(c.find({"x", "y"}), &xy);
  EXPECT_THROW(xy.inc(-1), std::invalid_argument);
  EXPECT_THROW(xy.inc(std::nan("")), std::invalid_argument);
  EXPECT_EQ(xy.value(), 0.0);
  Histogram& h = r.histogram("h", "x", {}, {1}).with({});
  EXPECT_THROW(h.observe(std::nan("")), std::invalid_argument);
  h.observe(-2);  // below every bound: the first bucket
  EXPECT_EQ(h.cumulative(), (std::vector<uint64_t>{1, 1}));
}

// ---- Events into series --------------------------------------------------------------------------

TEST(MetricsState, StartsWithRequestSeriesAtZero) {
  MetricsState s("m");
  const std::string page = s.render();
  for (const std::string reason : {"stop", "length", "abort", "error"})
    EXPECT_EQ(value_of(page, m_series("troupe:request_success_total", "finished_reason=\"" + reason + "\"")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:time_to_first_token_seconds_count")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:time_to_first_token_seconds_bucket", "le=\"0.001\"")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:time_to_first_token_seconds_bucket", "le=\"2560\"")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:inter_token_latency_seconds_bucket", "le=\"80\"")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:e2e_request_latency_seconds_bucket", "le=\"7680\"")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:request_prompt_tokens_count")), 0.0);
  // Per-rank series appear with their rank's first report.
  EXPECT_EQ(page.find("troupe:num_requests_running{"), std::string::npos);
  EXPECT_NE(page.find("# TYPE troupe:num_requests_running gauge\n"), std::string::npos);
}

// The `le` values of one series of a histogram, in page order.
std::vector<std::string> bucket_bounds(const std::string& page, const std::string& histogram) {
  const std::string prefix = histogram + "_bucket{model_name=\"m\",le=\"";
  std::vector<std::string> out;
  std::istringstream in(page);
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with(prefix))
      out.push_back(line.substr(prefix.size(), line.find('"', prefix.size()) - prefix.size()));
  }
  return out;
}

TEST(MetricsState, RequestHistogramsUseVllmBuckets) {
  MetricsState s("m");
  const std::string page = s.render();
  using L = std::vector<std::string>;
  EXPECT_EQ(bucket_bounds(page, "troupe:time_to_first_token_seconds"),
            (L{"0.001", "0.005", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1", "0.25", "0.5", "0.75", "1",
               "2.5", "5", "7.5", "10", "20", "40", "80", "160", "640", "2560", "+Inf"}));
  EXPECT_EQ(bucket_bounds(page, "troupe:inter_token_latency_seconds"),
            (L{"0.01", "0.025", "0.05", "0.075", "0.1", "0.15", "0.2", "0.3", "0.4", "0.5", "0.75", "1", "2.5", "5",
               "7.5", "10", "20", "40", "80", "+Inf"}));
  const L request_latency{"0.3", "0.5", "0.8", "1",   "1.5", "2",   "2.5", "5",    "10",   "15",  "20",
                          "30",  "40",  "50",  "60", "120", "240", "480", "960", "1920", "7680", "+Inf"};
  for (const char* name : {"troupe:e2e_request_latency_seconds", "troupe:request_queue_time_seconds",
                           "troupe:request_prefill_time_seconds", "troupe:request_decode_time_seconds"})
    EXPECT_EQ(bucket_bounds(page, name), request_latency) << name;
  EXPECT_EQ(bucket_bounds(page, "troupe:request_prompt_tokens"),
            (L{"1", "2", "5", "10", "20", "50", "100", "200", "500", "1000", "2000", "5000", "10000", "20000", "50000",
               "100000", "200000", "500000", "1000000", "+Inf"}));
}

TEST(MetricsState, RequestFeedsLatencyHistogramsOnce) {
  MetricsState s("m");
  const MetricsClock::time_point t0 = MetricsClock::now();
  RequestMetrics r;
  r.arrival = t0;
  r.scheduled = t0 + 500ms;
  r.first_token = t0 + 750ms;
  r.last_token = t0 + 2750ms;
  r.finished = t0 + 3s;
  r.prompt_tokens = 100;
  r.generation_tokens = 21;
  r.reason = FinishedReason::length;
  r.inter_token_seconds = {0.125f, 0.25f, 0.015625f};
  s.observe(r);
  const std::string page = s.render();

  EXPECT_EQ(value_of(page, m_series("troupe:request_success_total", "finished_reason=\"length\"")), 1.0);
  EXPECT_EQ(value_of(page, m_series("troupe:request_success_total", "finished_reason=\"stop\"")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:time_to_first_token_seconds_count")), 1.0);
  EXPECT_DOUBLE_EQ(value_of(page, m_series("troupe:time_to_first_token_seconds_sum")), 0.75);
  EXPECT_EQ(value_of(page, m_series("troupe:time_to_first_token_seconds_bucket", "le=\"0.5\"")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:time_to_first_token_seconds_bucket", "le=\"0.75\"")), 1.0);
  EXPECT_DOUBLE_EQ(value_of(page, m_series("troupe:e2e_request_latency_seconds_sum")), 3.0);
  EXPECT_EQ(value_of(page, m_series("troupe:e2e_request_latency_seconds_bucket", "le=\"2.5\"")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:e2e_request_latency_seconds_bucket", "le=\"5\"")), 1.0);
  EXPECT_DOUBLE_EQ(value_of(page, m_series("troupe:request_queue_time_seconds_sum")), 0.5);
  EXPECT_DOUBLE_EQ(value_of(page, m_series("troupe:request_prefill_time_seconds_sum")), 0.25);
  EXPECT_DOUBLE_EQ(value_of(page, m_series("troupe:request_decode_time_seconds_sum")), 2.0);
  EXPECT_EQ(value_of(page, m_series("troupe:inter_token_latency_seconds_count")), 3.0);
  EXPECT_DOUBLE_EQ(value_of(page, m_series("troupe:inter_token_latency_seconds_sum")), 0.390625);
  EXPECT_EQ(value_of(page, m_series("troupe:inter_token_latency_seconds_bucket", "le=\"0.01\"")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:inter_token_latency_seconds_bucket", "le=\"0.025\"")), 1.0);
  EXPECT_EQ(value_of(page, m_series("troupe:inter_token_latency_seconds_bucket", "le=\"0.15\"")), 2.0);
  EXPECT_EQ(value_of(page, m_series("troupe:inter_token_latency_seconds_bucket", "le=\"0.3\"")), 3.0);
  EXPECT_EQ(value_of(page, m_series("troupe:request_prompt_tokens_bucket", "le=\"50\"")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:request_prompt_tokens_bucket", "le=\"100\"")), 1.0);
  EXPECT_EQ(value_of(page, m_series("troupe:request_prompt_tokens_sum")), 100.0);
  EXPECT_EQ(value_of(page, m_series("troupe:request_generation_tokens_bucket", "le=\"20\"")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:request_generation_tokens_bucket", "le=\"50\"")), 1.0);
  EXPECT_EQ(value_of(page, m_series("troupe:request_generation_tokens_sum")), 21.0);
  // Token counters are the schedulers' (per step), not the requests'.
  EXPECT_EQ(page.find("troupe:prompt_tokens_total{"), std::string::npos);
}

TEST(MetricsState, RequestAbortedWhileWaitingSkipsWhatItNeverReached) {
  MetricsState s("m");
  const MetricsClock::time_point t0 = MetricsClock::now();
  RequestMetrics r;
  r.arrival = t0;
  r.finished = t0 + 2s;
  r.prompt_tokens = 7;
  r.reason = finished_reason(FinishReason::none, /*aborted=*/true, /*failed=*/false);
  s.observe(r);
  const std::string page = s.render();
  EXPECT_EQ(value_of(page, m_series("troupe:request_success_total", "finished_reason=\"abort\"")), 1.0);
  EXPECT_DOUBLE_EQ(value_of(page, m_series("troupe:e2e_request_latency_seconds_sum")), 2.0);
  EXPECT_EQ(value_of(page, m_series("troupe:request_queue_time_seconds_count")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:time_to_first_token_seconds_count")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:request_prefill_time_seconds_count")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:request_decode_time_seconds_count")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:inter_token_latency_seconds_count")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:request_prompt_tokens_sum")), 7.0);
  EXPECT_EQ(value_of(page, m_series("troupe:request_generation_tokens_bucket", "le=\"1\"")), 1.0);
}

TEST(MetricsState, FinishedReasonFromTheLastUpdate) {
  EXPECT_EQ(finished_reason(FinishReason::stop, false, false), FinishedReason::stop);
  EXPECT_EQ(finished_reason(FinishReason::length, false, false), FinishedReason::length);
  EXPECT_EQ(finished_reason(FinishReason::none, true, false), FinishedReason::abort);
  EXPECT_EQ(finished_reason(FinishReason::none, true, true), FinishedReason::error);
  EXPECT_STREQ(label_value(FinishedReason::error), "error");
}

TEST(MetricsState, SchedulerStepsSetGaugesAndAdvanceCounters) {
  MetricsState s("m");
  s.observe(SchedulerMetrics{.dp = 1, .running = 3, .waiting = 2, .preemptions = 4, .scheduled_tokens = 40,
                             .prompt_tokens = 30, .generation_tokens = 3});
  s.observe(SchedulerMetrics{.dp = 1, .running = 5, .waiting = 0, .preemptions = 6, .scheduled_tokens = 0,
                             .prompt_tokens = 0, .generation_tokens = 5});
  s.observe(SchedulerMetrics{.dp = 0, .running = 1, .waiting = 9, .preemptions = 0, .scheduled_tokens = 8,
                             .prompt_tokens = 8, .generation_tokens = 0});
  std::string page = s.render();
  EXPECT_EQ(value_of(page, m_series("troupe:num_requests_running", "dp=\"1\"")), 5.0);
  EXPECT_EQ(value_of(page, m_series("troupe:num_requests_waiting", "dp=\"1\"")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:num_requests_waiting", "dp=\"0\"")), 9.0);
  EXPECT_EQ(value_of(page, m_series("troupe:num_preemptions_total", "dp=\"1\"")), 6.0);
  EXPECT_EQ(value_of(page, m_series("troupe:num_preemptions_total", "dp=\"0\"")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:prompt_tokens_total", "dp=\"1\"")), 30.0);
  EXPECT_EQ(value_of(page, m_series("troupe:generation_tokens_total", "dp=\"1\"")), 8.0);
  EXPECT_EQ(value_of(page, m_series("troupe:prompt_tokens_total", "dp=\"0\"")), 8.0);
  // The empty micro-batch (0 tokens) is no engine step of its own.
  EXPECT_EQ(value_of(page, m_series("troupe:iteration_tokens_total_count", "dp=\"1\"")), 1.0);
  EXPECT_EQ(value_of(page, m_series("troupe:iteration_tokens_total_sum", "dp=\"1\"")), 40.0);
  EXPECT_EQ(value_of(page, m_series("troupe:iteration_tokens_total_bucket", "dp=\"1\",le=\"32\"")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:iteration_tokens_total_bucket", "dp=\"1\",le=\"64\"")), 1.0);
  EXPECT_EQ(value_of(page, m_series("troupe:iteration_tokens_total_bucket", "dp=\"0\",le=\"8\"")), 1.0);

  // A scheduler that starts over reports a smaller total: all of it is new.
  s.observe(SchedulerMetrics{.dp = 1, .preemptions = 1});
  page = s.render();
  EXPECT_EQ(value_of(page, m_series("troupe:num_preemptions_total", "dp=\"1\"")), 7.0);
}

TEST(MetricsState, KvReportsSetUsageAndTurnTotalsIntoIncreases) {
  MetricsState s("m");
  BlockManagerStats stats{.num_blocks = 200, .used_blocks = 50, .cached_free_blocks = 10, .prefix_queries = 64,
                          .prefix_hits = 32};
  s.observe(KvMetrics{0, stats});
  stats.used_blocks = 150;
  stats.prefix_queries = 96;
  stats.prefix_hits = 48;
  s.observe(KvMetrics{0, stats});
  s.observe(KvMetrics{0, stats});  // a repeated report adds nothing
  s.observe(KvMetrics{1, BlockManagerStats{.num_blocks = 0}});
  std::string page = s.render();
  EXPECT_DOUBLE_EQ(value_of(page, m_series("troupe:kv_cache_usage_perc", "dp=\"0\"")), 0.75);
  EXPECT_EQ(value_of(page, m_series("troupe:kv_cache_blocks", "dp=\"0\"")), 200.0);
  EXPECT_EQ(value_of(page, m_series("troupe:prefix_cache_queries_total", "dp=\"0\"")), 96.0);
  EXPECT_EQ(value_of(page, m_series("troupe:prefix_cache_hits_total", "dp=\"0\"")), 48.0);
  EXPECT_EQ(value_of(page, m_series("troupe:kv_cache_usage_perc", "dp=\"1\"")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:kv_cache_blocks", "dp=\"1\"")), 0.0);

  stats.prefix_queries = 16;  // a manager that started over
  stats.prefix_hits = 0;
  s.observe(KvMetrics{0, stats});
  page = s.render();
  EXPECT_EQ(value_of(page, m_series("troupe:prefix_cache_queries_total", "dp=\"0\"")), 112.0);
  EXPECT_EQ(value_of(page, m_series("troupe:prefix_cache_hits_total", "dp=\"0\"")), 48.0);
}

TEST(MetricsState, StageStepsGoToTheirRankAndStage) {
  MetricsState s("m");
  s.observe(StageMetrics{.dp = 0, .stage = 0, .seconds = 0.0078125});
  s.observe(StageMetrics{.dp = 0, .stage = 0, .seconds = 0.00048828125});
  s.observe(StageMetrics{.dp = 0, .stage = 1, .seconds = 2.0});
  s.observe(StageMetrics{.dp = 1, .stage = 1, .seconds = 0.5});
  const std::string page = s.render();
  EXPECT_EQ(value_of(page, m_series("troupe:pipeline_stage_step_seconds_count", "dp=\"0\",stage=\"0\"")), 2.0);
  EXPECT_DOUBLE_EQ(value_of(page, m_series("troupe:pipeline_stage_step_seconds_sum", "dp=\"0\",stage=\"0\"")),
                   0.00830078125);
  EXPECT_EQ(value_of(page, m_series("troupe:pipeline_stage_step_seconds_bucket", "dp=\"0\",stage=\"0\",le=\"0.0005\"")),
            1.0);
  EXPECT_EQ(value_of(page, m_series("troupe:pipeline_stage_step_seconds_bucket", "dp=\"0\",stage=\"0\",le=\"0.005\"")),
            1.0);
  EXPECT_EQ(value_of(page, m_series("troupe:pipeline_stage_step_seconds_bucket", "dp=\"0\",stage=\"0\",le=\"0.01\"")),
            2.0);
  EXPECT_EQ(value_of(page, m_series("troupe:pipeline_stage_step_seconds_count", "dp=\"0\",stage=\"1\"")), 1.0);
  EXPECT_EQ(value_of(page, m_series("troupe:pipeline_stage_step_seconds_sum", "dp=\"1\",stage=\"1\"")), 0.5);
  // Stage reports are no scheduler reports.
  EXPECT_EQ(page.find("troupe:num_requests_running{"), std::string::npos);
}

TEST(MetricsState, CollectivesObservedPerCalledKind) {
  MetricsState s("m");
  CollectiveMetrics c;
  c.seconds[static_cast<size_t>(Collective::all_reduce)] = 0.0009;
  c.calls[static_cast<size_t>(Collective::all_reduce)] = 64;
  c.seconds[static_cast<size_t>(Collective::send_recv)] = 0.25;  // no calls: not observed
  s.observe(c);
  c.seconds[static_cast<size_t>(Collective::all_reduce)] = 0.0011;
  c.step_seconds = 0.006;  // two steps whose collectives were timed, 3 ms each
  c.steps = 2;
  s.observe(c);
  const std::string page = s.render();
  EXPECT_EQ(value_of(page, m_series("troupe:timed_step_seconds_count", "")), 2.0);
  EXPECT_DOUBLE_EQ(value_of(page, m_series("troupe:timed_step_seconds_sum", "")), 0.006);
  EXPECT_EQ(value_of(page, m_series("troupe:collective_seconds_count", "kind=\"all_reduce\"")), 2.0);
  EXPECT_DOUBLE_EQ(value_of(page, m_series("troupe:collective_seconds_sum", "kind=\"all_reduce\"")), 0.002);
  EXPECT_EQ(value_of(page, m_series("troupe:collective_seconds_bucket", "kind=\"all_reduce\",le=\"0.001\"")), 1.0);
  EXPECT_EQ(value_of(page, m_series("troupe:collective_seconds_bucket", "kind=\"all_reduce\",le=\"0.002\"")), 2.0);
  EXPECT_EQ(page.find("kind=\"send_recv\""), std::string::npos);
}

TEST(MetricsState, ExpertTokensCountPerStageAndGlobalExpertId) {
  MetricsState s("m");
  s.observe(ExpertMetrics{.stage = 1, .first_expert = 4, .tokens = {3, 0, 5}});
  s.observe(ExpertMetrics{.stage = 1, .first_expert = 4, .tokens = {3, 0, 5}});
  s.observe(ExpertMetrics{.stage = 1, .first_expert = 0, .tokens = {1}});
  s.observe(ExpertMetrics{.stage = 0, .first_expert = 4, .tokens = {2}});
  const std::string page = s.render();
  EXPECT_EQ(value_of(page, m_series("troupe:expert_tokens_total", "stage=\"1\",expert=\"4\"")), 6.0);
  EXPECT_EQ(value_of(page, m_series("troupe:expert_tokens_total", "stage=\"1\",expert=\"5\"")), 0.0);
  EXPECT_EQ(value_of(page, m_series("troupe:expert_tokens_total", "stage=\"1\",expert=\"6\"")), 10.0);
  EXPECT_EQ(value_of(page, m_series("troupe:expert_tokens_total", "stage=\"1\",expert=\"0\"")), 1.0);
  EXPECT_EQ(value_of(page, m_series("troupe:expert_tokens_total", "stage=\"0\",expert=\"4\"")), 2.0);
  // Experts of other shards that never reported have no series.
  EXPECT_FALSE(sample(page, m_series("troupe:expert_tokens_total", "stage=\"1\",expert=\"1\"")));
}

TEST(MetricsState, MailboxGaugeIsTheDeepestLiveSender) {
  MetricsState s("m");
  const std::string scheduler = m_series("troupe:actor_mailbox_depth", "family=\"scheduler\"");
  const std::string worker = m_series("troupe:actor_mailbox_depth", "family=\"worker\"");
  EXPECT_TRUE(s.observe(MailboxDepth{ActorFamily::scheduler, 5}, 1));
  EXPECT_TRUE(s.observe(MailboxDepth{ActorFamily::scheduler, 9}, 2));
  EXPECT_FALSE(s.observe(MailboxDepth{ActorFamily::scheduler, 12}, 1));
  EXPECT_EQ(value_of(s.render(), scheduler), 12.0);
  EXPECT_FALSE(s.observe(MailboxDepth{ActorFamily::scheduler, 2}, 1));  // its latest sample counts
  EXPECT_EQ(value_of(s.render(), scheduler), 9.0);
  s.forget(2);
  EXPECT_EQ(value_of(s.render(), scheduler), 2.0);
  EXPECT_TRUE(s.observe(MailboxDepth{ActorFamily::worker, 4}, 3));
  EXPECT_FALSE(s.observe(MailboxDepth{ActorFamily::worker, 1}, 1));  // actor 1 now reports as a worker
  std::string page = s.render();
  EXPECT_EQ(value_of(page, scheduler), 0.0);
  EXPECT_EQ(value_of(page, worker), 4.0);
  s.forget(3);
  s.forget(1);
  s.forget(42);  // never seen: nothing happens
  page = s.render();
  EXPECT_EQ(value_of(page, worker), 0.0);
  EXPECT_EQ(value_of(page, scheduler), 0.0);
  EXPECT_STREQ(label_value(ActorFamily::kv_block_manager), "kv_block_manager");
}

// ---- promtool ------------------------------------------------------------------------------------

// A page with every family populated: several ranks, stages, all collective kinds and actor
// families, and a model name that needs escaping.
std::string full_page() {
  MetricsState s("tiny \"qwen3\" \\ moe\nv2");
  const MetricsClock::time_point t0 = MetricsClock::now();
  for (int i = 0; i < 3; ++i) {
    RequestMetrics r;
    r.arrival = t0;
    r.scheduled = t0 + 10ms * i;
    r.first_token = t0 + 50ms * (i + 1);
    r.last_token = t0 + 1s * (i + 1);
    r.finished = *r.last_token + 1ms;
    r.prompt_tokens = 100 * (i + 1);
    r.generation_tokens = 20 * (i + 1);
    r.reason = static_cast<FinishedReason>(i);
    r.inter_token_seconds = {0.02f, 0.03f, 0.5f};
    s.observe(r);
  }
  for (int dp = 0; dp < 2; ++dp) {
    s.observe(SchedulerMetrics{.dp = dp, .running = 4, .waiting = 1, .preemptions = 2, .scheduled_tokens = 300,
                               .prompt_tokens = 280, .generation_tokens = 4});
    s.observe(KvMetrics{dp, BlockManagerStats{.num_blocks = 512, .used_blocks = 100, .prefix_queries = 300,
                                              .prefix_hits = 128}});
    for (int stage = 0; stage < 2; ++stage) s.observe(StageMetrics{.dp = dp, .stage = stage, .seconds = 0.004});
  }
  CollectiveMetrics c;
  for (size_t k = 0; k < kNumCollectiveKinds; ++k) {
    c.seconds[k] = 0.0001 * static_cast<double>(k + 1);
    c.calls[k] = 8;
  }
  s.observe(c);
  for (int stage = 0; stage < 2; ++stage)
    s.observe(ExpertMetrics{.stage = stage, .first_expert = 0, .tokens = {5, 0, 7, 1}});
  for (size_t f = 0; f < kNumActorFamilies; ++f)
    s.observe(MailboxDepth{static_cast<ActorFamily>(f), f}, 100 + f);
  return s.render();
}

struct PromtoolVerdict {
  int exit_code = -1;
  std::vector<std::string> lines;  // what it printed, one problem per line
};

const char* const kPromtool = "/usr/bin/promtool";

PromtoolVerdict promtool_check(const std::string& page) {
  const std::filesystem::path dir = test::scratch_dir();
  const std::filesystem::path in = dir / "page.prom", out = dir / "promtool.out";
  std::ofstream(in, std::ios::binary) << page;
  const std::string command =
      std::string(kPromtool) + " check metrics < '" + in.string() + "' > '" + out.string() + "' 2>&1";
  const int status = std::system(command.c_str());
  PromtoolVerdict v;
  v.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream result(out);
  for (std::string line; std::getline(result, line);)
    if (!line.empty()) v.lines.push_back(line);
  return v;
}

// promtool's linter also holds vLLM's naming against us, on purpose: `troupe:` names keep the colon
// (vLLM's `vllm:` style, which operators' dashboards already match), and iteration_tokens_total is a
// histogram under vLLM's name. Those two remarks are the only ones a page may draw.
std::vector<std::string> unexpected_problems(const std::vector<std::string>& lines) {
  std::vector<std::string> unexpected;
  for (const std::string& line : lines) {
    const bool colon = line.starts_with("troupe:") && line.ends_with(" metric names should not contain ':'");
    const bool vllm_histogram_name =
        line == "troupe:iteration_tokens_total non-counter metrics should not have \"_total\" suffix";
    if (!colon && !vllm_histogram_name) unexpected.push_back(line);
  }
  return unexpected;
}

#define SKIP_WITHOUT_PROMTOOL()                                                              \
  if (!std::filesystem::exists(kPromtool))                                                   \
  GTEST_SKIP() << kPromtool << " is missing: install Debian's `prometheus` package (tools/setup.sh)"

TEST(MetricsPromtool, FullPageHasNoProblems) {
  SKIP_WITHOUT_PROMTOOL();
  const std::string page = full_page();
  const PromtoolVerdict v = promtool_check(page);
  std::string printed;
  for (const std::string& line : v.lines) printed += line + "\n";
  // 0: clean; 3: lint remarks only (1 would be a page it cannot parse).
  EXPECT_TRUE(v.exit_code == 0 || v.exit_code == 3) << "exit " << v.exit_code << "\n" << printed;
  EXPECT_EQ(unexpected_problems(v.lines), std::vector<std::string>{}) << printed << "\npage:\n" << page;
  // Every family is on the page with samples.
  for (const char* name :
       {"num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prefix_cache_queries_total",
        "prefix_cache_hits_total", "num_preemptions_total", "prompt_tokens_total", "generation_tokens_total",
        "request_success_total", "time_to_first_token_seconds_count", "inter_token_latency_seconds_count",
        "e2e_request_latency_seconds_count", "request_queue_time_seconds_count", "request_prefill_time_seconds_count",
        "request_decode_time_seconds_count", "request_prompt_tokens_count", "request_generation_tokens_count",
        "iteration_tokens_total_count", "kv_cache_blocks", "pipeline_stage_step_seconds_count",
        "collective_seconds_count", "actor_mailbox_depth", "expert_tokens_total"})
    EXPECT_NE(page.find("\ntroupe:" + std::string(name) + "{model_name=\"tiny \\\"qwen3\\\" \\\\ moe\\nv2\""),
              std::string::npos)
        << name;
}

// The check above is only worth something if promtool and the filter do catch mistakes.
TEST(MetricsPromtool, CatchesBrokenPages) {
  SKIP_WITHOUT_PROMTOOL();
  const std::string page = full_page();
  // A label value escaped wrongly: the page no longer parses.
  PromtoolVerdict v = promtool_check(page + "# HELP bad x\n# TYPE bad gauge\nbad{a=\"\\q\"} 1\n");
  EXPECT_EQ(v.exit_code, 1);
  // A counter without `_total`: a lint problem the filter lets through.
  v = promtool_check(page + "# HELP requests x\n# TYPE requests counter\nrequests 1\n");
  EXPECT_EQ(v.exit_code, 3);
  EXPECT_EQ(unexpected_problems(v.lines),
            std::vector<std::string>{"requests counter metrics should have \"_total\" suffix"});
}

// ---- The actor -----------------------------------------------------------------------------------

class MetricsActor : public ::testing::Test {
 protected:
  MetricsActor() : system_(configure(cfg_)), metrics_(spawn_metrics(system_, "m")) {}
  ~MetricsActor() override { caf::anon_send_exit(metrics_, caf::exit_reason::user_shutdown); }

  static caf::actor_system_config& configure(caf::actor_system_config& cfg) {
    cfg.set("scheduler.max-threads", size_t{2});
    cfg.set("logger.console", caf::atom("none"));
    return cfg;
  }

  std::string snapshot() {
    caf::scoped_actor self{system_};
    std::string page;
    self->request(metrics_, caf::infinite, atoms::snapshot::value)
        .receive([&](std::string& p) { page = std::move(p); },
                 [&](caf::error& e) { ADD_FAILURE() << system_.render(e); });
    return page;
  }

  caf::actor_system_config cfg_;
  caf::actor_system system_;
  caf::actor metrics_;
};

TEST_F(MetricsActor, ForwardsEveryEventAndAnswersSnapshots) {
  caf::scoped_actor self{system_};
  const MetricsClock::time_point t0 = MetricsClock::now();
  RequestMetrics r;
  r.arrival = t0;
  r.first_token = t0 + 250ms;
  r.finished = t0 + 1s;
  r.reason = FinishedReason::stop;
  CollectiveMetrics c;
  c.seconds[static_cast<size_t>(Collective::all_to_all)] = 0.001;
  c.calls[static_cast<size_t>(Collective::all_to_all)] = 2;
  // One send per call site, as the senders will do it.
  self->send(metrics_, atoms::observe::value, r);
  self->send(metrics_, atoms::observe::value, SchedulerMetrics{.dp = 0, .running = 2, .generation_tokens = 2});
  self->send(metrics_, atoms::observe::value, KvMetrics{0, BlockManagerStats{.num_blocks = 8, .used_blocks = 2}});
  self->send(metrics_, atoms::observe::value, StageMetrics{.dp = 0, .stage = 1, .seconds = 0.25});
  self->send(metrics_, atoms::observe::value, c);
  self->send(metrics_, atoms::observe::value, ExpertMetrics{.stage = 0, .first_expert = 2, .tokens = {9}});
  self->send(metrics_, atoms::observe::value, MailboxDepth{ActorFamily::router, 3});
  const std::string page = snapshot();
  EXPECT_EQ(value_of(page, m_series("troupe:request_success_total", "finished_reason=\"stop\"")), 1.0);
  EXPECT_DOUBLE_EQ(value_of(page, m_series("troupe:time_to_first_token_seconds_sum")), 0.25);
  EXPECT_EQ(value_of(page, m_series("troupe:num_requests_running", "dp=\"0\"")), 2.0);
  EXPECT_EQ(value_of(page, m_series("troupe:generation_tokens_total", "dp=\"0\"")), 2.0);
  EXPECT_DOUBLE_EQ(value_of(page, m_series("troupe:kv_cache_usage_perc", "dp=\"0\"")), 0.25);
  EXPECT_EQ(value_of(page, m_series("troupe:pipeline_stage_step_seconds_sum", "dp=\"0\",stage=\"1\"")), 0.25);
  EXPECT_EQ(value_of(page, m_series("troupe:collective_seconds_count", "kind=\"all_to_all\"")), 1.0);
  EXPECT_EQ(value_of(page, m_series("troupe:expert_tokens_total", "stage=\"0\",expert=\"2\"")), 9.0);
  EXPECT_EQ(value_of(page, m_series("troupe:actor_mailbox_depth", "family=\"router\"")), 3.0);
}

TEST_F(MetricsActor, ForgetsTheMailboxOfAnActorThatExits) {
  const std::string scheduler = m_series("troupe:actor_mailbox_depth", "family=\"scheduler\"");
  caf::scoped_actor survivor{system_};
  survivor->send(metrics_, atoms::observe::value, MailboxDepth{ActorFamily::scheduler, 3});
  {
    caf::scoped_actor leaver{system_};
    leaver->send(metrics_, atoms::observe::value, MailboxDepth{ActorFamily::scheduler, 7});
    EXPECT_EQ(value_of(snapshot(), scheduler), 7.0);
  }
  // The down message is on its way once the scoped actor is gone; give it a moment if need be.
  double depth = 0;
  for (int i = 0; i < 200; ++i) {
    depth = value_of(snapshot(), scheduler);
    if (depth == 3.0) break;
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(depth, 3.0);
}

}  // namespace
}  // namespace troupe
