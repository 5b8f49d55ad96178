#include "tools/bench_stats.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>

#include "config/error.hpp"

namespace troupe {
namespace {

namespace json = boost::json;

std::string line(const char* label, const std::string& value) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%-40s %-10s\n", label, value.c_str());
  return buf;
}
std::string fixed(double v, int digits = 2) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}
// A title centred in a line of 50 dashes, as Python's "{:-^50}" writes it.
std::string section(const std::string& title, char fill = '-') {
  const size_t width = 50;
  const size_t left = title.size() >= width ? 0 : (width - title.size()) / 2;
  const size_t right = title.size() >= width ? 0 : width - title.size() - left;
  return std::string(left, fill) + title + std::string(right, fill) + "\n";
}

std::string distribution_lines(const char* title, const char* name, const Distribution& d) {
  std::string out = section(title);
  const std::pair<const char*, double> rows[] = {{"Mean", d.mean}, {"Median", d.median}, {"P90", d.p90}, {"P99", d.p99}};
  for (const auto& [what, v] : rows) out += line((std::string(what) + " " + name + " (ms):").c_str(), fixed(v * 1e3));
  return out;
}

json::value optional_number(const std::optional<double>& v) { return v ? json::value(*v) : json::value(nullptr); }

json::array numbers(const std::vector<double>& v) {
  json::array a;
  a.reserve(v.size());
  for (double x : v) a.push_back(x);
  return a;
}

}  // namespace

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const double rank = p / 100.0 * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (rank - static_cast<double>(lo)) * (values[hi] - values[lo]);
}

Distribution distribution(const std::vector<double>& values) {
  Distribution d;
  if (values.empty()) return d;
  const double n = static_cast<double>(values.size());
  d.mean = std::accumulate(values.begin(), values.end(), 0.0) / n;
  double squares = 0.0;
  for (double v : values) squares += (v - d.mean) * (v - d.mean);
  d.std = std::sqrt(squares / n);
  d.median = percentile(values, 50);
  d.p90 = percentile(values, 90);
  d.p99 = percentile(values, 99);
  return d;
}

Slo parse_slo(const std::vector<std::string>& items) {
  Slo slo;
  for (const std::string& item : items) {
    const size_t colon = item.find(':');
    const std::string key = item.substr(0, colon);
    double v = 0.0;
    size_t used = 0;
    try {
      if (colon != std::string::npos) v = std::stod(item.substr(colon + 1), &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (colon == std::string::npos || used == 0 || used != item.size() - colon - 1 || !(v > 0) || !std::isfinite(v))
      throw ConfigError("--goodput: expected KEY:MILLISECONDS with a positive number, got '" + item + "'");
    if (key == "ttft") slo.ttft_ms = v;
    else if (key == "tpot") slo.tpot_ms = v;
    else if (key == "e2el") slo.e2el_ms = v;
    else throw ConfigError("--goodput: unknown SLO '" + key + "' (expected ttft, tpot or e2el)");
  }
  return slo;
}

void summarize(BenchResult& r, LoadResult load) {
  r.duration_s = load.duration_s;
  r.peak_concurrency = load.peak_concurrency;
  r.requests = std::move(load.requests);
  std::vector<double> ttfts, tpots, itls, e2els;
  int good = 0;
  for (const RequestRecord& q : r.requests) {
    const StreamMeasure& m = q.measure;
    if (!m.ok) {
      ++r.failed;
      ++r.failures[m.error];
      continue;
    }
    ++r.completed;
    r.total_input_tokens += q.input_tokens;
    r.total_output_tokens += q.output_tokens;
    ttfts.push_back(m.ttft);
    e2els.push_back(m.e2el);
    itls.insert(itls.end(), m.itl.begin(), m.itl.end());
    double tpot = 0.0;
    if (q.output_tokens > 1) {
      tpot = (m.e2el - m.ttft) / (q.output_tokens - 1);
      tpots.push_back(tpot);
    }
    const Slo& s = r.slo;
    if ((!s.ttft_ms || m.ttft * 1e3 <= *s.ttft_ms) && (!s.tpot_ms || tpot * 1e3 <= *s.tpot_ms) &&
        (!s.e2el_ms || m.e2el * 1e3 <= *s.e2el_ms))
      ++good;
  }
  const double d = r.duration_s > 0 ? r.duration_s : std::numeric_limits<double>::infinity();
  r.request_throughput = r.completed / d;
  r.output_throughput = static_cast<double>(r.total_output_tokens) / d;
  r.total_token_throughput = static_cast<double>(r.total_input_tokens + r.total_output_tokens) / d;
  if (r.slo.any()) r.request_goodput = good / d;
  r.ttft = distribution(ttfts);
  r.tpot = distribution(tpots);
  r.itl = distribution(itls);
  r.e2el = distribution(e2els);
}

std::string format_report(const BenchResult& r) {
  std::string out = section(" Serving Benchmark Result ", '=');
  out += line("Successful requests:", std::to_string(r.completed));
  out += line("Failed requests:", std::to_string(r.failed));
  if (r.max_concurrency > 0) out += line("Maximum request concurrency:", std::to_string(r.max_concurrency));
  out += line("Request rate configured (RPS):", std::isinf(r.request_rate) ? "inf" : fixed(r.request_rate));
  out += line("Benchmark duration (s):", fixed(r.duration_s));
  out += line("Total input tokens:", std::to_string(r.total_input_tokens));
  out += line("Total generated tokens:", std::to_string(r.total_output_tokens));
  out += line("Request throughput (req/s):", fixed(r.request_throughput));
  if (r.request_goodput) out += line("Request goodput (req/s):", fixed(*r.request_goodput));
  out += line("Output token throughput (tok/s):", fixed(r.output_throughput));
  out += line("Total token throughput (tok/s):", fixed(r.total_token_throughput));
  out += line("Peak concurrent requests:", std::to_string(r.peak_concurrency));
  out += distribution_lines("Time to First Token", "TTFT", r.ttft);
  out += distribution_lines("Time per Output Token (excl. 1st token)", "TPOT", r.tpot);
  out += distribution_lines("Inter-token Latency", "ITL", r.itl);
  out += distribution_lines("End-to-end Latency", "E2EL", r.e2el);
  const ServerMetricsReport& s = r.server;
  out += section("Server (troupe /metrics)");
  if (!s.troupe) {
    out += line("Server metrics:", "n/a (no troupe: metrics at /metrics)");
  } else {
    auto percent = [](const std::optional<double>& v) { return v ? fixed(*v * 100.0) : std::string("n/a"); };
    out += line("KV cache usage peak (%):", percent(s.kv_usage_peak));
    out += line("Prefix cache hit rate (%):", percent(s.prefix_hit_rate));
    out += line("Preemptions:", fixed(s.preemptions, 0));
    out += line("Communication share (%):", percent(s.communication_share));
  }
  if (!r.failures.empty()) {
    out += section("Failures");
    for (const auto& [reason, n] : r.failures) {
      char count[32];
      std::snprintf(count, sizeof count, "%6d  ", n);
      out += count + reason + "\n";
    }
  }
  out += std::string(50, '=') + "\n";
  return out;
}

json::object result_json(const BenchResult& r) {
  json::object o;
  o["backend"] = "openai";
  o["base_url"] = r.base_url;
  o["model_id"] = r.model;
  o["dataset"] = r.dataset;
  o["prompt_format"] = r.prompt_format;
  o["endpoint"] = r.endpoint;
  o["num_prompts"] = r.num_prompts;
  o["request_rate"] = std::isinf(r.request_rate) ? json::value("inf") : json::value(r.request_rate);
  o["burstiness"] = r.burstiness;
  o["max_concurrency"] = r.max_concurrency > 0 ? json::value(r.max_concurrency) : json::value(nullptr);
  o["duration"] = r.duration_s;
  o["completed"] = r.completed;
  o["failed"] = r.failed;
  o["peak_concurrency"] = r.peak_concurrency;
  o["total_input_tokens"] = r.total_input_tokens;
  o["total_output_tokens"] = r.total_output_tokens;
  o["request_throughput"] = r.request_throughput;
  o["request_goodput"] = optional_number(r.request_goodput);
  o["output_throughput"] = r.output_throughput;
  o["total_token_throughput"] = r.total_token_throughput;
  o["goodput_slos_ms"] = json::object{{"ttft", optional_number(r.slo.ttft_ms)},
                                      {"tpot", optional_number(r.slo.tpot_ms)},
                                      {"e2el", optional_number(r.slo.e2el_ms)}};
  const std::pair<const char*, const Distribution*> metrics[] = {
      {"ttft", &r.ttft}, {"tpot", &r.tpot}, {"itl", &r.itl}, {"e2el", &r.e2el}};
  for (const auto& [name, d] : metrics) {
    const std::string n = name;
    o["mean_" + n + "_ms"] = d->mean * 1e3;
    o["median_" + n + "_ms"] = d->median * 1e3;
    o["std_" + n + "_ms"] = d->std * 1e3;
    o["p90_" + n + "_ms"] = d->p90 * 1e3;
    o["p99_" + n + "_ms"] = d->p99 * 1e3;
  }
  json::object failures;
  for (const auto& [reason, n] : r.failures) failures[reason] = n;
  o["failures"] = std::move(failures);

  const ServerMetricsReport& s = r.server;
  json::object server{{"troupe", s.troupe}, {"readings", s.readings}};
  if (s.troupe) {
    json::object collectives;
    for (const auto& [kind, v] : s.collective_seconds) collectives[kind] = v;
    server["kv_cache_usage_peak"] = optional_number(s.kv_usage_peak);
    server["prefix_cache_queries"] = s.prefix_queries;
    server["prefix_cache_hits"] = s.prefix_hits;
    server["prefix_cache_hit_rate"] = optional_number(s.prefix_hit_rate);
    server["preemptions"] = s.preemptions;
    server["communication_share"] = optional_number(s.communication_share);
    server["collective_seconds"] = std::move(collectives);
    server["stage_seconds"] = s.stage_seconds;
    server["timed_step_seconds"] = s.timed_step_seconds;
    server["timed_steps"] = s.timed_steps;
    json::object per_step;
    for (const auto& [kind, v] : s.collective_seconds_per_step()) per_step[kind] = v;
    server["collective_seconds_per_step"] = std::move(per_step);
  }
  o["server"] = std::move(server);

  json::array input_lens, output_lens, ttfts, itls, e2els, tpots, starts, success, errors, texts, conversations, turns;
  for (const RequestRecord& q : r.requests) {
    const StreamMeasure& m = q.measure;
    input_lens.push_back(q.input_tokens);
    output_lens.push_back(q.output_tokens);
    ttfts.push_back(m.ok ? m.ttft : 0.0);
    itls.push_back(m.ok ? numbers(m.itl) : json::array());
    e2els.push_back(m.ok ? m.e2el : 0.0);
    tpots.push_back(m.ok && q.output_tokens > 1 ? (m.e2el - m.ttft) / (q.output_tokens - 1) : 0.0);
    starts.push_back(q.start_s);
    success.push_back(m.ok);
    errors.push_back(json::string(m.error));
    texts.push_back(json::string(m.text));
    conversations.push_back(q.conversation);
    turns.push_back(q.turn);
  }
  o["input_lens"] = std::move(input_lens);
  o["output_lens"] = std::move(output_lens);
  o["ttfts"] = std::move(ttfts);
  o["itls"] = std::move(itls);
  o["e2els"] = std::move(e2els);
  o["tpots"] = std::move(tpots);
  o["start_times"] = std::move(starts);
  o["success"] = std::move(success);
  o["errors"] = std::move(errors);
  o["generated_texts"] = std::move(texts);
  o["conversations"] = std::move(conversations);
  o["turns"] = std::move(turns);
  return o;
}

}  // namespace troupe
