// The figures of `troupe bench serve`, computed from the requests' records as vLLM's `bench serve`
// computes them (../shared/REFERENCE.md), the terminal report and the JSON result file.
//
//   - completed: successful requests; duration: first arrival to the last request's end;
//   - request throughput = completed / duration; output token throughput = Σ output tokens of
//     completed requests / duration; total token throughput adds their input tokens;
//   - TTFT and E2EL: over completed requests; TPOT: over completed requests with more than one
//     output token, (E2EL − TTFT) / (output tokens − 1); ITL: every gap of every completed request;
//   - each as mean, standard deviation (population, numpy's default), median, p90, p99, where the
//     p-th percentile of n sorted values interpolates linearly at rank p/100·(n−1) (numpy's default
//     "linear" method); all 0 when there are no values, as vLLM reports them;
//   - goodput = completed requests meeting every SLO given (TTFT, TPOT, E2EL ≤ the limit; a request
//     with one output token has TPOT 0) / duration.
#pragma once

#include <boost/json/object.hpp>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "tools/bench_client.hpp"
#include "tools/bench_server_metrics.hpp"

namespace troupe {

struct Distribution {  // seconds
  double mean = 0.0, std = 0.0, median = 0.0, p90 = 0.0, p99 = 0.0;
};
double percentile(std::vector<double> values, double p);  // numpy's linear method; 0 when empty
Distribution distribution(const std::vector<double>& values);

// Service-level objectives in milliseconds; unset ones are not checked.
struct Slo {
  std::optional<double> ttft_ms, tpot_ms, e2el_ms;
  bool any() const { return ttft_ms || tpot_ms || e2el_ms; }
};
// "ttft:500" items (keys ttft, tpot, e2el; values in ms, > 0); throws ConfigError naming --goodput.
Slo parse_slo(const std::vector<std::string>& items);

struct BenchResult {
  // What was run (echoed into the result file).
  std::string base_url, model, dataset, prompt_format, endpoint;
  int num_prompts = 0;
  double request_rate = 0.0;  // inf: all at once
  double burstiness = 1.0;
  int max_concurrency = 0;    // 0: unlimited
  Slo slo;

  double duration_s = 0.0;
  int completed = 0;
  int failed = 0;
  int peak_concurrency = 0;
  long long total_input_tokens = 0;
  long long total_output_tokens = 0;
  double request_throughput = 0.0;
  std::optional<double> request_goodput;  // with SLOs only
  double output_throughput = 0.0;
  double total_token_throughput = 0.0;
  Distribution ttft, tpot, itl, e2el;
  std::map<std::string, int> failures;  // by reason
  std::vector<RequestRecord> requests;
  ServerMetricsReport server;
};

// Fills the figures of `result` from `load` (the run's echo fields are the caller's).
void summarize(BenchResult& result, LoadResult load);

// vLLM's "Serving Benchmark Result" block, plus troupe's server figures and the failures.
std::string format_report(const BenchResult& r);

// Every figure (vLLM's key names: mean_ttft_ms, p99_itl_ms, ...) and the per-request arrays
// (input_lens, output_lens, ttfts, itls, e2els, tpots, start_times in seconds; errors, success).
boost::json::object result_json(const BenchResult& r);

}  // namespace troupe
