#include "tools/bench_server_metrics.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>

namespace troupe {
namespace {

constexpr const char* kKvUsage = "troupe:kv_cache_usage_perc";
constexpr const char* kPrefixQueries = "troupe:prefix_cache_queries_total";
constexpr const char* kPrefixHits = "troupe:prefix_cache_hits_total";
constexpr const char* kPreemptions = "troupe:num_preemptions_total";
constexpr const char* kCollectiveSum = "troupe:collective_seconds_sum";
constexpr const char* kCollectiveCount = "troupe:collective_seconds_count";
constexpr const char* kTimedStepSum = "troupe:timed_step_seconds_sum";
constexpr const char* kTimedStepCount = "troupe:timed_step_seconds_count";
constexpr const char* kStageSum = "troupe:pipeline_stage_step_seconds_sum";
constexpr const char* kCollectiveKinds[] = {"all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv"};

}  // namespace

double PromPage::sum(const std::string& name) const {
  double s = 0.0;
  if (auto it = samples.find(name); it != samples.end())
    for (const auto& [labels, v] : it->second) s += v;
  return s;
}

std::optional<double> PromPage::max(const std::string& name) const {
  std::optional<double> m;
  if (auto it = samples.find(name); it != samples.end())
    for (const auto& [labels, v] : it->second) m = m ? std::max(*m, v) : v;
  return m;
}

double PromPage::sum_where(const std::string& name, std::string_view label) const {
  double s = 0.0;
  if (auto it = samples.find(name); it != samples.end())
    for (const auto& [labels, v] : it->second)
      if (labels.find(label) != std::string::npos) s += v;
  return s;
}

PromPage parse_prometheus(std::string_view text) {
  PromPage page;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
    if (line.empty() || line[0] == '#') continue;
    size_t end = line.find_first_of("{ ");
    if (end == std::string_view::npos) continue;
    const std::string name(line.substr(0, end));
    std::string labels;
    if (line[end] == '{') {
      // Up to the closing brace that is not inside a quoted label value.
      bool quoted = false;
      size_t i = end + 1;
      for (; i < line.size(); ++i) {
        if (quoted && line[i] == '\\') {
          ++i;
        } else if (line[i] == '"') {
          quoted = !quoted;
        } else if (!quoted && line[i] == '}') {
          break;
        }
      }
      if (i >= line.size()) continue;
      labels = std::string(line.substr(end + 1, i - end - 1));
      end = i + 1;
    }
    const std::string value(line.substr(end));
    char* parsed_end = nullptr;
    const double v = std::strtod(value.c_str(), &parsed_end);
    if (parsed_end == value.c_str()) continue;
    page.samples[name].emplace_back(std::move(labels), v);
  }
  return page;
}

ServerMetricsReport server_metrics_report(const PromPage& before, const PromPage& after, std::optional<double> peak,
                                          int readings) {
  ServerMetricsReport r;
  r.readings = readings;
  r.troupe = std::any_of(after.samples.begin(), after.samples.end(),
                         [](const auto& s) { return s.first.starts_with("troupe:"); });
  if (!r.troupe) return r;
  auto delta = [&](const char* name) { return std::max(0.0, after.sum(name) - before.sum(name)); };
  r.kv_usage_peak = peak;
  r.prefix_queries = delta(kPrefixQueries);
  r.prefix_hits = delta(kPrefixHits);
  if (r.prefix_queries > 0) r.prefix_hit_rate = r.prefix_hits / r.prefix_queries;
  r.preemptions = delta(kPreemptions);
  for (const char* kind : kCollectiveKinds) {
    const std::string label = std::string("kind=\"") + kind + "\"";
    const double s = std::max(0.0, after.sum_where(kCollectiveSum, label) - before.sum_where(kCollectiveSum, label));
    const double n = std::max(0.0, after.sum_where(kCollectiveCount, label) - before.sum_where(kCollectiveCount, label));
    if (n > 0) r.collective_seconds[kind] = s;
  }
  r.stage_seconds = delta(kStageSum);
  r.timed_step_seconds = delta(kTimedStepSum);
  r.timed_steps = delta(kTimedStepCount);
  if (!r.collective_seconds.empty() && r.timed_step_seconds > 0) {
    double collective = 0.0;
    for (const auto& [kind, s] : r.collective_seconds) collective += s;
    r.communication_share = collective / r.timed_step_seconds;
  }
  return r;
}

std::map<std::string, double> ServerMetricsReport::collective_seconds_per_step() const {
  std::map<std::string, double> out;
  if (timed_steps > 0)
    for (const auto& [kind, s] : collective_seconds) out[kind] = s / timed_steps;
  return out;
}

struct MetricsPoller::Impl {
  HttpFetcher fetcher;
  std::chrono::milliseconds interval;
  std::optional<PromPage> first, last;
  std::optional<double> peak;
  int readings = 0;
  std::mutex mutex;
  std::condition_variable cv;
  bool stopping = false;
  std::thread thread;

  Impl(const BaseUrl& url, std::string api_key, std::chrono::milliseconds every)
      : fetcher(url, std::move(api_key)), interval(every) {}

  void read() {
    const HttpReply r = fetcher.get("/metrics", std::chrono::seconds(5));
    if (r.status != 200) return;
    PromPage page = parse_prometheus(r.body);
    std::lock_guard lock(mutex);
    if (auto m = page.max(kKvUsage)) peak = peak ? std::max(*peak, *m) : *m;
    ++readings;
    if (!first) first = page;
    last = std::move(page);
  }
};

MetricsPoller::MetricsPoller(const BaseUrl& url, std::string api_key, std::chrono::milliseconds interval)
    : impl_(std::make_unique<Impl>(url, std::move(api_key), interval)) {
  impl_->read();
}

MetricsPoller::~MetricsPoller() {
  if (impl_->thread.joinable()) stop();
}

bool MetricsPoller::troupe() const {
  return impl_->first && std::any_of(impl_->first->samples.begin(), impl_->first->samples.end(),
                                     [](const auto& s) { return s.first.starts_with("troupe:"); });
}

void MetricsPoller::start() {
  Impl* impl = impl_.get();
  impl->thread = std::thread([impl] {
    std::unique_lock lock(impl->mutex);
    while (!impl->cv.wait_for(lock, impl->interval, [impl] { return impl->stopping; })) {
      lock.unlock();
      impl->read();
      lock.lock();
    }
  });
}

ServerMetricsReport MetricsPoller::stop() {
  {
    std::lock_guard lock(impl_->mutex);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_->read();
  if (!impl_->first || !impl_->last) return {};
  return server_metrics_report(*impl_->first, *impl_->last, impl_->peak, impl_->readings);
}

}  // namespace troupe
