#include "tools/sweep_result.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <cctype>
#include <cstdio>
#include <stdexcept>

#include "config/error.hpp"

namespace troupe {
namespace {

namespace json = boost::json;

std::optional<double> number(const json::object& o, const char* key) {
  const json::value* v = o.if_contains(key);
  if (!v) return std::nullopt;
  if (v->is_double()) return v->as_double();
  if (v->is_int64()) return static_cast<double>(v->as_int64());
  if (v->is_uint64()) return static_cast<double>(v->as_uint64());
  return std::nullopt;
}
double number_or(const json::object& o, const char* key, double fallback = 0) {
  return number(o, key).value_or(fallback);
}
std::string string_or(const json::object& o, const char* key) {
  const json::value* v = o.if_contains(key);
  return v && v->is_string() ? std::string(v->as_string()) : std::string();
}
json::value optional_value(const std::optional<double>& v) { return v ? json::value(*v) : json::value(nullptr); }

// The figures of a point from `figures` (flat keys) and its server figures from `server`.
SweepPoint read_point(const json::object& figures, const json::object& server) {
  SweepPoint p;
  p.concurrency = static_cast<int>(number_or(figures, "concurrency", number_or(figures, "max_concurrency")));
  p.file = string_or(figures, "file");
  p.num_prompts = static_cast<int>(number_or(figures, "num_prompts"));
  p.completed = static_cast<int>(number_or(figures, "completed"));
  p.failed = static_cast<int>(number_or(figures, "failed"));
  p.duration_s = number_or(figures, "duration");
  p.output_throughput = number_or(figures, "output_throughput");
  p.total_token_throughput = number_or(figures, "total_token_throughput");
  p.request_throughput = number_or(figures, "request_throughput");
  p.mean_ttft_ms = number_or(figures, "mean_ttft_ms");
  p.median_ttft_ms = number_or(figures, "median_ttft_ms");
  p.p99_ttft_ms = number_or(figures, "p99_ttft_ms");
  p.mean_tpot_ms = number_or(figures, "mean_tpot_ms");
  p.median_tpot_ms = number_or(figures, "median_tpot_ms");
  p.p99_tpot_ms = number_or(figures, "p99_tpot_ms");
  p.median_itl_ms = number_or(figures, "median_itl_ms");
  p.median_e2el_ms = number_or(figures, "median_e2el_ms");
  p.kv_cache_usage_peak = number(server, "kv_cache_usage_peak");
  p.prefix_cache_hit_rate = number(server, "prefix_cache_hit_rate");
  p.communication_share = number(server, "communication_share");
  p.preemptions = number_or(server, "preemptions");
  if (const json::value* f = figures.if_contains("failures"); f && f->is_object())
    for (const auto& [reason, n] : f->as_object())
      if (n.is_int64()) p.failures[std::string(reason)] = static_cast<int>(n.as_int64());
  return p;
}

json::object point_json(const SweepPoint& p) {
  json::object failures;
  for (const auto& [reason, n] : p.failures) failures[reason] = n;
  return json::object{{"concurrency", p.concurrency},
                      {"file", p.file},
                      {"num_prompts", p.num_prompts},
                      {"completed", p.completed},
                      {"failed", p.failed},
                      {"duration", p.duration_s},
                      {"output_throughput", p.output_throughput},
                      {"total_token_throughput", p.total_token_throughput},
                      {"request_throughput", p.request_throughput},
                      {"mean_ttft_ms", p.mean_ttft_ms},
                      {"median_ttft_ms", p.median_ttft_ms},
                      {"p99_ttft_ms", p.p99_ttft_ms},
                      {"mean_tpot_ms", p.mean_tpot_ms},
                      {"median_tpot_ms", p.median_tpot_ms},
                      {"p99_tpot_ms", p.p99_tpot_ms},
                      {"median_itl_ms", p.median_itl_ms},
                      {"median_e2el_ms", p.median_e2el_ms},
                      {"kv_cache_usage_peak", optional_value(p.kv_cache_usage_peak)},
                      {"prefix_cache_hit_rate", optional_value(p.prefix_cache_hit_rate)},
                      {"preemptions", p.preemptions},
                      {"communication_share", optional_value(p.communication_share)},
                      {"failures", std::move(failures)}};
}

std::string csv_number(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}
std::string csv_optional(const std::optional<double>& v, int decimals) { return v ? csv_number(*v, decimals) : ""; }

std::string csv_quote(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char ch : s) out += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return out + "\"";
}

}  // namespace

std::optional<int64_t> SweepLayout::kv_blocks_per_gpu() const {
  if (kv_blocks_per_replica.empty()) return std::nullopt;
  return *std::min_element(kv_blocks_per_replica.begin(), kv_blocks_per_replica.end());
}

std::optional<int64_t> SweepLayout::kv_tokens() const {
  if (kv_blocks_per_replica.empty()) return std::nullopt;
  int64_t sum = 0;
  for (int64_t b : kv_blocks_per_replica) sum += b;
  return sum * block_size;
}

const SweepPoint* SweepLayout::at(int concurrency) const {
  for (const SweepPoint& p : points)
    if (p.concurrency == concurrency && p.ok()) return &p;
  return nullptr;
}

std::vector<SweepWinner> sweep_winners(const SweepData& d) {
  std::vector<SweepWinner> out;
  for (int c : d.concurrency) {
    SweepWinner w;
    w.concurrency = c;
    bool any = false;
    for (const SweepLayout& l : d.layouts) {
      const SweepPoint* p = l.at(c);
      if (!p) continue;
      if (!any || p->output_throughput > w.output_throughput) {
        w.throughput_layout = l.name();
        w.output_throughput = p->output_throughput;
      }
      if (!any || p->median_ttft_ms < w.median_ttft_ms) {
        w.ttft_layout = l.name();
        w.median_ttft_ms = p->median_ttft_ms;
      }
      any = true;
    }
    if (any) out.push_back(w);
  }
  return out;
}

std::vector<SweepCrossover> sweep_crossovers(const std::vector<SweepWinner>& winners) {
  std::vector<SweepCrossover> out;
  for (size_t i = 1; i < winners.size(); ++i)
    if (winners[i].throughput_layout != winners[i - 1].throughput_layout)
      out.push_back({winners[i - 1].concurrency, winners[i].concurrency, winners[i - 1].throughput_layout,
                     winners[i].throughput_layout});
  return out;
}

std::vector<SweepRegime> sweep_regimes(const std::vector<SweepWinner>& winners, bool by_ttft) {
  std::vector<SweepRegime> out;
  for (size_t i = 0; i < winners.size(); ++i) {
    const std::string& layout = by_ttft ? winners[i].ttft_layout : winners[i].throughput_layout;
    if (!out.empty() && out.back().layout == layout)
      out.back().last = i;
    else
      out.push_back({i, i, layout});
  }
  return out;
}

ParallelConfig parse_layout_name(const std::string& text) {
  auto bad = [&](const std::string& why) {
    return ConfigError("layout '" + text + "': " + why + " (expected names such as tp4, tp2·pp2, tp2.pp2, dp4+ep)");
  };
  std::string s;
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char ch = static_cast<unsigned char>(text[i]);
    if (ch == 0xC2 && i + 1 < text.size() && static_cast<unsigned char>(text[i + 1]) == 0xB7) {
      s += '.';  // "·"
      ++i;
    } else if (ch == '*') {
      s += '.';
    } else if (!std::isspace(ch)) {
      s += static_cast<char>(std::tolower(ch));
    }
  }
  ParallelConfig p;
  const size_t plus = s.find('+');
  if (plus != std::string::npos) {
    if (s.substr(plus) != "+ep") throw bad("only +ep may follow the sizes");
    p.enable_expert_parallel = true;
    s = s.substr(0, plus);
  }
  if (s.empty()) throw bad("no sizes");
  bool seen[3] = {false, false, false};
  size_t begin = 0;
  while (begin <= s.size()) {
    size_t end = s.find('.', begin);
    if (end == std::string::npos) end = s.size();
    const std::string part = s.substr(begin, end - begin);
    const std::string kind = part.substr(0, 2);
    const int which = kind == "tp" ? 0 : kind == "pp" ? 1 : kind == "dp" ? 2 : -1;
    const std::string digits = part.size() > 2 ? part.substr(2) : "";
    if (which < 0 || digits.empty() || digits.size() > 4 ||
        !std::all_of(digits.begin(), digits.end(), [](unsigned char c) { return std::isdigit(c); }))
      throw bad("'" + part + "' is not tpN, ppN or dpN");
    if (seen[which]) throw bad(kind + " given twice");
    seen[which] = true;
    const int n = std::stoi(digits);
    if (n < 1) throw bad(kind + " must be at least 1");
    (which == 0 ? p.tensor_parallel_size : which == 1 ? p.pipeline_parallel_size : p.data_parallel_size) = n;
    begin = end + 1;
  }
  return p;
}

std::string layout_file_name(const ParallelConfig& p) {
  std::string name = p.name(), out;
  for (size_t i = 0; i < name.size(); ++i) {
    if (static_cast<unsigned char>(name[i]) == 0xC2 && i + 1 < name.size()) {
      out += '.';
      ++i;
    } else {
      out += name[i];
    }
  }
  return out;
}

SweepPoint point_from_bench_json(const json::object& result) {
  static const json::object empty;
  const json::value* server = result.if_contains("server");
  return read_point(result, server && server->is_object() ? server->as_object() : empty);
}

json::object sweep_json(const SweepData& d) {
  json::array concurrency, server_args, layouts, winners, crossovers;
  for (int c : d.concurrency) concurrency.push_back(c);
  for (const std::string& a : d.server_args) server_args.push_back(json::value(a));
  for (const SweepLayout& l : d.layouts) {
    json::array points, blocks;
    for (const SweepPoint& p : l.points) points.push_back(point_json(p));
    for (int64_t b : l.kv_blocks_per_replica) blocks.push_back(b);
    json::object o{{"name", l.name()},
                   {"tensor_parallel_size", l.parallel.tensor_parallel_size},
                   {"pipeline_parallel_size", l.parallel.pipeline_parallel_size},
                   {"data_parallel_size", l.parallel.data_parallel_size},
                   {"enable_expert_parallel", l.parallel.enable_expert_parallel},
                   {"status", l.status},
                   {"log_file", l.log_file},
                   {"kv_blocks_per_replica", std::move(blocks)},
                   {"block_size", l.block_size}};
    const auto per_gpu = l.kv_blocks_per_gpu();
    const auto tokens = l.kv_tokens();
    o["kv_blocks_per_gpu"] = per_gpu ? json::value(*per_gpu) : json::value(nullptr);
    o["kv_tokens"] = tokens ? json::value(*tokens) : json::value(nullptr);
    if (!l.error.empty()) o["error"] = l.error;
    if (!l.log_tail.empty()) o["log_tail"] = l.log_tail;
    o["points"] = std::move(points);
    layouts.push_back(std::move(o));
  }
  const std::vector<SweepWinner> w = sweep_winners(d);
  for (const SweepWinner& x : w)
    winners.push_back(json::object{
        {"concurrency", x.concurrency},
        {"throughput", json::object{{"layout", x.throughput_layout}, {"output_throughput", x.output_throughput}}},
        {"ttft", json::object{{"layout", x.ttft_layout}, {"median_ttft_ms", x.median_ttft_ms}}}});
  for (const SweepCrossover& x : sweep_crossovers(w))
    crossovers.push_back(json::object{{"below", x.below}, {"above", x.above}, {"from", x.from}, {"to", x.to}});
  return json::object{{"version", 1},
                      {"model", json::object{{"dir", d.model_dir}, {"architecture", d.architecture}}},
                      {"device", d.device},
                      {"load_format", d.load_format},
                      {"gpus", d.gpus},
                      {"input_len", d.input_len},
                      {"output_len", d.output_len},
                      {"concurrency", std::move(concurrency)},
                      {"server_args", std::move(server_args)},
                      {"layouts", std::move(layouts)},
                      {"winners", std::move(winners)},
                      {"crossovers", std::move(crossovers)}};
}

SweepData sweep_from_json(const json::value& v) {
  if (!v.is_object()) throw std::runtime_error("not a sweep.json: the top level is not an object");
  const json::object& o = v.as_object();
  const json::value* layouts = o.if_contains("layouts");
  if (!layouts || !layouts->is_array()) throw std::runtime_error("not a sweep.json: no \"layouts\" array");
  SweepData d;
  if (const json::value* m = o.if_contains("model"); m && m->is_object()) {
    d.model_dir = string_or(m->as_object(), "dir");
    d.architecture = string_or(m->as_object(), "architecture");
  }
  d.device = string_or(o, "device");
  d.load_format = string_or(o, "load_format");
  d.gpus = static_cast<int>(number_or(o, "gpus"));
  d.input_len = static_cast<int>(number_or(o, "input_len"));
  d.output_len = static_cast<int>(number_or(o, "output_len"));
  if (const json::value* c = o.if_contains("concurrency"); c && c->is_array())
    for (const json::value& x : c->as_array())
      if (x.is_int64()) d.concurrency.push_back(static_cast<int>(x.as_int64()));
  if (const json::value* a = o.if_contains("server_args"); a && a->is_array())
    for (const json::value& x : a->as_array())
      if (x.is_string()) d.server_args.emplace_back(x.as_string());
  for (const json::value& lv : layouts->as_array()) {
    if (!lv.is_object()) throw std::runtime_error("not a sweep.json: a layout is not an object");
    const json::object& lo = lv.as_object();
    SweepLayout l;
    l.parallel.tensor_parallel_size = static_cast<int>(number_or(lo, "tensor_parallel_size", 1));
    l.parallel.pipeline_parallel_size = static_cast<int>(number_or(lo, "pipeline_parallel_size", 1));
    l.parallel.data_parallel_size = static_cast<int>(number_or(lo, "data_parallel_size", 1));
    const json::value* ep = lo.if_contains("enable_expert_parallel");
    l.parallel.enable_expert_parallel = ep && ep->is_bool() && ep->as_bool();
    l.status = string_or(lo, "status");
    l.error = string_or(lo, "error");
    l.log_tail = string_or(lo, "log_tail");
    l.log_file = string_or(lo, "log_file");
    l.block_size = static_cast<int>(number_or(lo, "block_size", 16));
    if (const json::value* b = lo.if_contains("kv_blocks_per_replica"); b && b->is_array())
      for (const json::value& x : b->as_array())
        if (x.is_int64()) l.kv_blocks_per_replica.push_back(x.as_int64());
    if (const json::value* pts = lo.if_contains("points"); pts && pts->is_array())
      for (const json::value& pv : pts->as_array())
        if (pv.is_object()) l.points.push_back(read_point(pv.as_object(), pv.as_object()));
    d.layouts.push_back(std::move(l));
  }
  if (d.concurrency.empty()) {  // older or hand-made files: the concurrencies the points have
    for (const SweepLayout& l : d.layouts)
      for (const SweepPoint& p : l.points) d.concurrency.push_back(p.concurrency);
    std::sort(d.concurrency.begin(), d.concurrency.end());
    d.concurrency.erase(std::unique(d.concurrency.begin(), d.concurrency.end()), d.concurrency.end());
  }
  return d;
}

std::string sweep_csv(const SweepData& d) {
  std::string out =
      "layout,tensor_parallel_size,pipeline_parallel_size,data_parallel_size,expert_parallel,concurrency,status,"
      "num_prompts,completed,failed,duration_s,output_throughput_tok_s,total_throughput_tok_s,"
      "request_throughput_req_s,ttft_mean_ms,ttft_p50_ms,ttft_p99_ms,tpot_mean_ms,tpot_p50_ms,tpot_p99_ms,"
      "itl_p50_ms,e2el_p50_ms,kv_usage_peak,prefix_hit_rate,preemptions,comm_share,kv_blocks_per_gpu,kv_tokens,"
      "file\n";
  for (const SweepLayout& l : d.layouts) {
    const auto per_gpu = l.kv_blocks_per_gpu();
    const auto tokens = l.kv_tokens();
    const std::string kv = (per_gpu ? std::to_string(*per_gpu) : "") + "," + (tokens ? std::to_string(*tokens) : "");
    const std::string head = csv_quote(l.name()) + "," + std::to_string(l.parallel.tensor_parallel_size) + "," +
                             std::to_string(l.parallel.pipeline_parallel_size) + "," +
                             std::to_string(l.parallel.data_parallel_size) + "," +
                             (l.parallel.enable_expert_parallel ? "1" : "0") + ",";
    for (int c : d.concurrency) {
      const SweepPoint* p = nullptr;
      for (const SweepPoint& x : l.points)
        if (x.concurrency == c) p = &x;
      if (!p) {
        // A row for every layout × concurrency: what kept this one from being measured.
        out += head + std::to_string(c) + "," + (l.status == "failed" ? "failed" : "missing") + std::string(20, ',') +
               kv + ",\n";
        continue;
      }
      out += head + std::to_string(c) + "," + (p->ok() ? "ok" : "no_success") + "," + std::to_string(p->num_prompts) +
             "," + std::to_string(p->completed) + "," + std::to_string(p->failed) + "," + csv_number(p->duration_s, 3) +
             "," + csv_number(p->output_throughput, 3) + "," + csv_number(p->total_token_throughput, 3) + "," +
             csv_number(p->request_throughput, 4) + "," + csv_number(p->mean_ttft_ms, 3) + "," +
             csv_number(p->median_ttft_ms, 3) + "," + csv_number(p->p99_ttft_ms, 3) + "," +
             csv_number(p->mean_tpot_ms, 3) + "," + csv_number(p->median_tpot_ms, 3) + "," +
             csv_number(p->p99_tpot_ms, 3) + "," + csv_number(p->median_itl_ms, 3) + "," +
             csv_number(p->median_e2el_ms, 3) + "," + csv_optional(p->kv_cache_usage_peak, 6) + "," +
             csv_optional(p->prefix_cache_hit_rate, 6) + "," + csv_number(p->preemptions, 0) + "," +
             csv_optional(p->communication_share, 4) + "," + kv + "," + csv_quote(p->file) + "\n";
    }
  }
  return out;
}

}  // namespace troupe
