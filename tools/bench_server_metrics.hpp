// What `troupe bench serve` reads from a troupe server's /metrics (Prometheus text) around a run:
// the server is troupe when the page has `troupe:` series. Read just before the run, polled during
// it, and read after it:
//   - KV usage peak: the largest `troupe:kv_cache_usage_perc` of any data-parallel rank in any
//     reading (sampled, so a peak shorter than the poll interval can be missed);
//   - prefix cache hit rate: Δ`troupe:prefix_cache_hits_total` / Δ`troupe:prefix_cache_queries_total`
//     (both in prompt tokens, summed over ranks);
//   - preemptions: Δ`troupe:num_preemptions_total`;
//   - communication share: of the steps whose collectives a worker timed, the time in collectives
//     over the time of those same steps: Δ`troupe:collective_seconds_sum` (all kinds) /
//     Δ`troupe:timed_step_seconds_sum`, both summed over the workers (a GPU worker times one step
//     in 256, run without its graph; the CPU backend's workers time every step). Per kind, the
//     seconds a worker's step spends in it: Δ`troupe:collective_seconds_sum{kind}` /
//     Δ`troupe:timed_step_seconds_count`. n/a when no worker timed a collective (one device).
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tools/bench_client.hpp"

namespace troupe {

// One Prometheus page: every sample's value by metric name, one entry per label set.
struct PromPage {
  std::map<std::string, std::vector<std::pair<std::string, double>>> samples;  // name -> (labels, value)
  double sum(const std::string& name) const;
  std::optional<double> max(const std::string& name) const;
  // The sum over the series whose labels contain `label` (e.g. kind="all_reduce").
  double sum_where(const std::string& name, std::string_view label) const;
};
PromPage parse_prometheus(std::string_view text);

struct ServerMetricsReport {
  bool troupe = false;  // the server exports troupe: metrics
  int readings = 0;
  std::optional<double> kv_usage_peak;  // fraction (1 = 100%)
  double prefix_queries = 0.0;          // Δ, prompt tokens
  double prefix_hits = 0.0;
  std::optional<double> prefix_hit_rate;  // n/a without queries
  double preemptions = 0.0;
  std::optional<double> communication_share;       // n/a without collectives
  std::map<std::string, double> collective_seconds;  // Δ by kind
  double timed_step_seconds = 0.0;                   // Δ, the steps whose collectives were timed
  double timed_steps = 0.0;                          // Δ, their number (worker-steps)
  double stage_seconds = 0.0;                        // Δ over every stage
  // collective_seconds[kind] / timed_steps: a worker's seconds in that kind per step.
  std::map<std::string, double> collective_seconds_per_step() const;
};

// Δ figures between two pages, the peak over every page seen (`peak` includes both ends).
ServerMetricsReport server_metrics_report(const PromPage& before, const PromPage& after, std::optional<double> peak,
                                          int readings);

// Polls /metrics on a thread of its own until stop(); report() compares the first and last pages.
class MetricsPoller {
 public:
  MetricsPoller(const BaseUrl& url, std::string api_key, std::chrono::milliseconds interval);
  ~MetricsPoller();
  MetricsPoller(const MetricsPoller&) = delete;
  MetricsPoller& operator=(const MetricsPoller&) = delete;
  bool troupe() const;  // the first page had troupe: series (known once constructed)
  void start();
  ServerMetricsReport stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace troupe
