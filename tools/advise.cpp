// `troupe advise`: a layout per load regime from a sweep's measurements, with the measured reasons,
// and how the usual rules of thumb fared in that sweep. Every claim is a ratio of two measured
// figures of the sweep (or KV capacities from the plan); a rule without the layouts to test it is
// "not measured".
#include <boost/json.hpp>
#include <boost/program_options.hpp>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "config/error.hpp"
#include "tools/command_error.hpp"
#include "tools/command_flags.hpp"
#include "tools/sweep.hpp"
#include "tools/sweep_result.hpp"

namespace troupe {
namespace {

namespace json = boost::json;
namespace po = boost::program_options;

std::string fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}
std::string ms(double v) { return fixed(v, v < 10 ? 2 : 1) + " ms"; }
std::string tps(double v) { return fixed(v, v < 100 ? 1 : 0); }
std::string times(double r) { return fixed(r, 2) + "×"; }
std::string times_range(double lo, double hi) {
  return hi - lo < 0.005 * std::max(1.0, std::fabs(hi)) ? times(hi) : fixed(lo, 2) + "–" + times(hi);
}
std::string tokens(int64_t n) {  // 1,048,576
  std::string s = std::to_string(n), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}
std::string percent(double f) { return fixed(f * 100, 0) + "%"; }

// For "X is slower than Y" given X's throughput over Y's: within 3% is no measured difference.
std::string slower_verdict(double ratio) {
  if (std::fabs(ratio - 1) < 0.03) return "no difference beyond 3%";
  return ratio < 1 ? "held" : "did not hold";
}

// "RULE: L vs BASE at c=C: R× the output throughput, TPOT p50 a vs b: verdict" for a rule that says
// L is slower than BASE.
std::string slower_at(const std::string& rule, const SweepLayout& l, const SweepLayout& base, int c) {
  const double ratio = l.at(c)->output_throughput / base.at(c)->output_throughput;
  return rule + ": " + l.name() + " vs " + base.name() + " at c=" + std::to_string(c) + ": " + times(ratio) +
         " the output throughput, TPOT p50 " + ms(l.at(c)->median_tpot_ms) + " vs " + ms(base.at(c)->median_tpot_ms) +
         ": " + slower_verdict(ratio);
}

const SweepLayout* find(const SweepData& d, int tp, int pp, int dp, bool ep) {
  for (const SweepLayout& l : d.layouts) {
    const ParallelConfig& p = l.parallel;
    if (p.tensor_parallel_size == tp && p.pipeline_parallel_size == pp && p.data_parallel_size == dp &&
        p.enable_expert_parallel == ep)
      return &l;
  }
  return nullptr;
}
const SweepLayout* find(const SweepData& d, const std::string& name) {
  for (const SweepLayout& l : d.layouts)
    if (l.name() == name) return &l;
  return nullptr;
}

// Concurrencies (ascending) at which every layout given has an ok point.
std::vector<int> common(const SweepData& d, std::initializer_list<const SweepLayout*> layouts) {
  std::vector<int> out;
  for (int c : d.concurrency) {
    bool all = true;
    for (const SweepLayout* l : layouts) all = all && l && l->at(c);
    if (all) out.push_back(c);
  }
  return out;
}

// KV capacity in tokens (all replicas) of two layouts: from the plan when it has both, else from the
// servers' KV blocks (never one of each: the plan sizes for GPUs, the servers for what they ran on).
struct Capacity {
  std::map<std::string, int64_t> plan;
  bool of(const SweepLayout& a, const SweepLayout& b, int64_t& ka, int64_t& kb, std::string& source) const {
    const auto pa = plan.find(a.name()), pb = plan.find(b.name());
    if (pa != plan.end() && pb != plan.end()) {
      ka = pa->second, kb = pb->second, source = "from the plan";
      return true;
    }
    const auto sa = a.kv_tokens(), sb = b.kv_tokens();
    if (!sa || !sb) return false;
    ka = *sa, kb = *sb, source = "from the servers";
    return true;
  }
};

Capacity read_plan(const std::string& file) {
  Capacity cap;
  if (file.empty()) return cap;
  std::ifstream in(file);
  if (!in) throw ConfigError("--plan: cannot read " + file);
  boost::system::error_code ec;
  const json::value v = json::parse(std::string(std::istreambuf_iterator<char>(in), {}), ec);
  if (ec || !v.is_object() || !v.as_object().contains("layouts") || !v.as_object().at("layouts").is_array())
    throw ConfigError("--plan: " + file + " is not the JSON of troupe plan --json");
  for (const json::value& l : v.as_object().at("layouts").as_array()) {
    if (!l.is_object()) continue;
    const json::object& o = l.as_object();
    const json::value* name = o.if_contains("name");
    const json::value* kv = o.if_contains("kv");
    if (!name || !name->is_string() || !kv || !kv->is_object()) continue;
    const json::value* total = kv->as_object().if_contains("total_tokens");
    if (total && total->is_int64()) cap.plan[std::string(name->as_string())] = total->as_int64();
  }
  return cap;
}

std::string regime_label(const std::vector<SweepWinner>& w, const SweepRegime& r) {
  const int lo = w[r.first].concurrency, hi = w[r.last].concurrency;
  const bool first = r.first == 0, last = r.last + 1 == w.size();
  if (first && last)
    return lo == hi ? "at " + std::to_string(lo) + " concurrent (the only concurrency measured)"
                    : "at every measured concurrency (" + std::to_string(lo) + "–" + std::to_string(hi) + ")";
  if (first) return "≤ " + std::to_string(hi) + " concurrent";
  if (last) return "≥ " + std::to_string(lo) + " concurrent";
  return lo == hi ? std::to_string(lo) + " concurrent" : std::to_string(lo) + "–" + std::to_string(hi) + " concurrent";
}

// The layout the regime's winner is compared with: the neighbouring regime's winner, else the
// runner-up at the regime's highest concurrency.
const SweepLayout* partner(const SweepData& d, const std::vector<SweepWinner>& w, const std::vector<SweepRegime>& rs,
                           size_t i, bool by_ttft) {
  const SweepLayout* winner = find(d, rs[i].layout);
  if (rs.size() > 1) {
    const SweepLayout* other = find(d, rs[i == 0 ? 1 : i - 1].layout);
    for (size_t k = rs[i].first; k <= rs[i].last; ++k)
      if (other && other->at(w[k].concurrency)) return other;
  }
  const int c = w[rs[i].last].concurrency;
  const SweepLayout* best = nullptr;
  for (const SweepLayout& l : d.layouts) {
    if (&l == winner || !l.at(c)) continue;
    const SweepPoint* p = l.at(c);
    if (!best || (by_ttft ? p->median_ttft_ms < best->at(c)->median_ttft_ms
                          : p->output_throughput > best->at(c)->output_throughput))
      best = &l;
  }
  return best;
}

std::string regime_reasons(const std::vector<SweepWinner>& w, const SweepRegime& r, const SweepLayout& win,
                           const SweepLayout* other, const Capacity& cap, bool by_ttft) {
  if (!other) return "the only layout measured there";
  std::vector<int> cs;
  for (size_t k = r.first; k <= r.last; ++k)
    if (other->at(w[k].concurrency)) cs.push_back(w[k].concurrency);
  if (cs.empty()) return "no other layout measured there";
  double lo = INFINITY, hi = 0, tlo = INFINITY, thi = 0;
  for (int c : cs) {
    const double t = win.at(c)->output_throughput / other->at(c)->output_throughput;
    const double f = other->at(c)->median_ttft_ms / win.at(c)->median_ttft_ms;
    lo = std::min(lo, t), hi = std::max(hi, t), tlo = std::min(tlo, f), thi = std::max(thi, f);
  }
  const int c_low = cs.front(), c_high = cs.back();
  const std::string name = other->name();
  const std::string thr = times_range(lo, hi) + " the output throughput of " + name + " (" +
                          tps(win.at(c_high)->output_throughput) + " vs " + tps(other->at(c_high)->output_throughput) +
                          " tok/s at c=" + std::to_string(c_high) + ")";
  const std::string ttft = "TTFT p50 " + ms(win.at(c_low)->median_ttft_ms) + " vs " +
                           ms(other->at(c_low)->median_ttft_ms) + " for " + name + " at c=" + std::to_string(c_low);
  std::string s = by_ttft ? ttft + "; " + thr : thr + "; " + ttft;
  int64_t ka = 0, kb = 0;
  std::string src;
  if (cap.of(win, *other, ka, kb, src) && kb > 0) {
    const double k = static_cast<double>(ka) / static_cast<double>(kb);
    s += std::fabs(k - 1) < 0.01
             ? "; the same KV capacity (" + tokens(ka) + " tokens, " + src + ")"
             : "; " + times(k) + " the KV capacity (" + tokens(ka) + " vs " + tokens(kb) + " tokens, " + src + ")";
  }
  if (!by_ttft) {
    const SweepWinner& at_low = w[r.first];
    if (at_low.ttft_layout != win.name())
      s += " (lowest TTFT p50 at c=" + std::to_string(at_low.concurrency) + ": " + at_low.ttft_layout + ", " +
           ms(at_low.median_ttft_ms) + ")";
  }
  return s;
}

// ---- the rules of thumb --------------------------------------------------------------------------

std::vector<std::string> rule_larger_tp(const SweepData& d) {
  std::vector<std::string> out;
  for (bool ep : {false, true}) {
    // At each concurrency, the lowest TTFT p50 among pp = 1 layouts of each TP size (any dp).
    int held = 0, tested = 0;
    std::string detail, misses;
    for (int c : d.concurrency) {
      std::map<int, const SweepLayout*> best;
      for (const SweepLayout& l : d.layouts) {
        const ParallelConfig& p = l.parallel;
        if (p.pipeline_parallel_size != 1 || p.enable_expert_parallel != ep || !l.at(c)) continue;
        const SweepLayout*& b = best[p.tensor_parallel_size];
        if (!b || l.at(c)->median_ttft_ms < b->at(c)->median_ttft_ms) b = &l;
      }
      if (best.size() < 2) continue;
      ++tested;
      bool ok = true;
      std::string chain;
      const SweepLayout* prev = nullptr;
      for (const auto& [tp, l] : best) {
        if (prev && !(l->at(c)->median_ttft_ms < prev->at(c)->median_ttft_ms)) ok = false;
        chain += (chain.empty() ? "" : ", ") + l->name() + " " + ms(l->at(c)->median_ttft_ms);
        prev = l;
      }
      held += ok ? 1 : 0;
      const double ratio = best.begin()->second->at(c)->median_ttft_ms / best.rbegin()->second->at(c)->median_ttft_ms;
      if (detail.empty())
        detail = "at c=" + std::to_string(c) + ": " + chain + " (" + best.rbegin()->second->name() + " " +
                 (ratio >= 1 ? times(ratio) + " lower" : times(1 / ratio) + " higher") + " than " +
                 best.begin()->second->name() + ")";
      if (!ok) misses += (misses.empty() ? "" : "; ") + ("c=" + std::to_string(c) + ": " + chain);
    }
    if (tested == 0) continue;
    std::string s = std::string("larger TP gives lower TTFT") + (ep ? " (expert-parallel layouts)" : "") + ": " +
                    (held == tested ? "held"
                     : held == 0    ? "did not hold"
                                    : "held in part") +
                    " at " + std::to_string(held) + " of " + std::to_string(tested) + " concurrencies; " + detail;
    if (!misses.empty() && held > 0) s += "; not at " + misses;
    out.push_back(s);
  }
  if (out.empty()) out.push_back("larger TP gives lower TTFT: not measured (needs two TP sizes with pp = 1)");
  return out;
}

std::vector<std::string> rule_dp_linear(const SweepData& d) {
  std::vector<std::string> out;
  for (const SweepLayout& l : d.layouts) {
    const ParallelConfig& p = l.parallel;
    if (p.data_parallel_size < 2) continue;
    const SweepLayout* base = find(d, p.tensor_parallel_size, p.pipeline_parallel_size, 1, p.enable_expert_parallel);
    if (!base || common(d, {&l, base}).empty())
      base = find(d, p.tensor_parallel_size, p.pipeline_parallel_size, 1, false);
    const std::vector<int> cs = common(d, {&l, base});
    if (cs.empty()) continue;
    const int c = cs.back();
    const double ratio = l.at(c)->output_throughput / base->at(c)->output_throughput;
    const double eff = ratio / p.data_parallel_size;
    out.push_back("DP is the linear lever for throughput: " + l.name() + " gives " + times(ratio) + " " + base->name() +
                  "'s output throughput at c=" + std::to_string(c) + " (" + tps(l.at(c)->output_throughput) + " vs " +
                  tps(base->at(c)->output_throughput) + " tok/s), " + percent(eff) + " of linear (" +
                  std::to_string(p.data_parallel_size) + "×): " + (eff >= 0.9 ? "held" : "fell short") +
                  " (held = at least 90% of linear)");
  }
  if (out.empty())
    out.push_back(
        "DP is the linear lever for throughput: not measured (needs a dp layout and its single replica, "
        "e.g. dp2 and tp1)");
  return out;
}

std::vector<std::string> rule_pp_small_batches(const SweepData& d) {
  std::vector<std::string> out;
  for (const SweepLayout& l : d.layouts) {
    const ParallelConfig& p = l.parallel;
    if (p.pipeline_parallel_size < 2) continue;
    const SweepLayout* base =
        find(d, p.tensor_parallel_size * p.pipeline_parallel_size, 1, p.data_parallel_size, p.enable_expert_parallel);
    const std::vector<int> cs = common(d, {&l, base});
    if (cs.empty()) continue;
    out.push_back(slower_at("PP hurts small batches", l, *base, cs.front()));
  }
  if (out.empty())
    out.push_back(
        "PP hurts small batches: not measured (needs a pp layout and the tp layout of the same GPUs, e.g. "
        "tp2·pp2 and tp4)");
  return out;
}

std::vector<std::string> rule_ep_low(const SweepData& d) {
  std::vector<std::string> out;
  for (const SweepLayout& l : d.layouts) {
    const ParallelConfig& p = l.parallel;
    if (!p.enable_expert_parallel) continue;
    const SweepLayout* base = find(d, p.tensor_parallel_size, p.pipeline_parallel_size, p.data_parallel_size, false);
    const std::vector<int> cs = common(d, {&l, base});
    if (cs.empty()) continue;
    const int lo = cs.front(), hi = cs.back();
    std::string s = slower_at("EP is slower at low concurrency", l, *base, lo);
    if (hi != lo)
      s += "; at c=" + std::to_string(hi) + ": " + times(l.at(hi)->output_throughput / base->at(hi)->output_throughput);
    out.push_back(s);
  }
  if (out.empty())
    out.push_back(
        "EP is slower at low concurrency: not measured (needs an expert-parallel layout and the same layout "
        "without EP)");
  return out;
}

std::string rule_tp_ep_vs_dp_ep(const SweepData& d) {
  const SweepLayout *a = nullptr, *b = nullptr;
  for (const SweepLayout& l : d.layouts) {
    const ParallelConfig& p = l.parallel;
    if (!p.enable_expert_parallel || p.pipeline_parallel_size != 1 || common(d, {&l}).empty()) continue;
    if (p.data_parallel_size == 1 && p.tensor_parallel_size > 1 &&
        (!a || p.tensor_parallel_size > a->parallel.tensor_parallel_size))
      a = &l;
    if (p.tensor_parallel_size == 1 && p.data_parallel_size > 1 &&
        (!b || p.data_parallel_size > b->parallel.data_parallel_size))
      b = &l;
  }
  const std::string head = "TP+EP wins at low concurrency, DP+EP at high: ";
  if (!a || !b) return head + "not measured (needs a tpN+ep and a dpN+ep layout)";
  const std::vector<int> cs = common(d, {a, b});
  if (cs.size() < 2)
    return head + "not measured (" + a->name() + " and " + b->name() + " share fewer than two concurrencies)";
  auto ratio = [&](int c) { return a->at(c)->output_throughput / b->at(c)->output_throughput; };
  const int lo = cs.front(), hi = cs.back();
  const bool low = ratio(lo) >= 1, high = ratio(hi) < 1;
  std::string s = head + "at c=" + std::to_string(lo) + " " + (low ? a->name() : b->name()) + " has " +
                  times(low ? ratio(lo) : 1 / ratio(lo)) + " the output throughput (TTFT p50 " +
                  ms(a->at(lo)->median_ttft_ms) + " for " + a->name() + " vs " + ms(b->at(lo)->median_ttft_ms) +
                  " for " + b->name() + "); at c=" + std::to_string(hi) + " " + (high ? b->name() : a->name()) +
                  " has " + times(high ? 1 / ratio(hi) : ratio(hi)) + ": " +
                  (low && high ? "held"
                   : low       ? "held at low concurrency only"
                   : high      ? "held at high concurrency only"
                               : "did not hold");
  std::string cross;
  for (size_t i = 1; i < cs.size(); ++i)
    if ((ratio(cs[i - 1]) >= 1) != (ratio(cs[i]) >= 1))
      cross +=
          (cross.empty() ? "" : ", ") + ("between c=" + std::to_string(cs[i - 1]) + " and c=" + std::to_string(cs[i]));
  s += cross.empty() ? "; no crossover in the measured range" : "; crossover " + cross;
  return s;
}

}  // namespace

int advise_command(int argc, char** argv) {
  po::options_description flags("troupe advise: a layout per load regime, from a troupe sweep's measurements");
  std::string sweep_file, plan_file, objective = "throughput";
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("sweep", po::value(&sweep_file)->required(), "the sweep.json that troupe sweep wrote")
      ("plan", po::value(&plan_file), "troupe plan --json output: KV capacities of the layouts on the GPUs planned for")
      ("objective", po::value(&objective), "throughput (highest output tokens/s, the default) or ttft (lowest TTFT p50)");
  // clang-format on
  SweepData d;
  Capacity cap;
  try {
    if (!parse_flags(argc, argv, flags)) return 0;
    if (objective != "throughput" && objective != "ttft")
      throw ConfigError("--objective: expected throughput or ttft, got '" + objective + "'");
    std::ifstream in(sweep_file);
    if (!in) throw ConfigError("--sweep: cannot read " + sweep_file);
    boost::system::error_code ec;
    const json::value v = json::parse(std::string(std::istreambuf_iterator<char>(in), {}), ec);
    if (ec) throw ConfigError("--sweep: " + sweep_file + " is not JSON: " + ec.message());
    try {
      d = sweep_from_json(v);
    } catch (const std::exception& e) {
      throw ConfigError("--sweep: " + sweep_file + ": " + e.what());
    }
    cap = read_plan(plan_file);
  } catch (...) {
    return command_error("advise");
  }

  const bool by_ttft = objective == "ttft";
  const std::vector<SweepWinner> w = sweep_winners(d);
  std::string measured, failed;
  for (const SweepLayout& l : d.layouts) {
    bool any = false;
    for (const SweepPoint& p : l.points) any = any || p.ok();
    if (any) measured += (measured.empty() ? "" : ", ") + l.name();
    if (l.status == "failed") failed += "\n  " + l.name() + " failed: " + l.error;
  }
  std::string cs;
  for (const SweepWinner& x : w) cs += (cs.empty() ? "" : ", ") + std::to_string(x.concurrency);
  std::printf("troupe advise: %s over %d GPUs, input %d / output %d tokens%s\n", d.architecture.c_str(), d.gpus,
              d.input_len, d.output_len, d.device.empty() ? "" : (", device " + d.device).c_str());
  std::printf("measured: %s at c = %s%s\n", measured.empty() ? "nothing" : measured.c_str(), cs.c_str(),
              failed.c_str());
  if (d.device == "cpu")
    std::printf(
        "note: the CPU backend runs every rank as a thread of one process; these figures are a smoke run, "
        "not a hardware result\n");
  if (w.empty()) {
    std::printf("\nno recommendation: the sweep has no successful point\n");
    return 1;
  }

  std::printf("\nrecommendation (%s at each concurrency):\n",
              by_ttft ? "lowest TTFT p50" : "highest output throughput");
  const std::vector<SweepRegime> rs = sweep_regimes(w, by_ttft);
  for (size_t i = 0; i < rs.size(); ++i) {
    const SweepLayout* win = find(d, rs[i].layout);
    std::printf("  %s: %s — %s\n", regime_label(w, rs[i]).c_str(), rs[i].layout.c_str(),
                regime_reasons(w, rs[i], *win, partner(d, w, rs, i, by_ttft), cap, by_ttft).c_str());
  }
  const std::vector<SweepCrossover> cross = sweep_crossovers(w);
  for (const SweepCrossover& x : cross)
    std::printf("  crossover (throughput): %s → %s between c=%d and c=%d\n", x.from.c_str(), x.to.c_str(), x.below,
                x.above);

  std::printf("\nrules of thumb in this sweep:\n");
  std::vector<std::string> rules;
  for (auto* f : {rule_larger_tp, rule_dp_linear, rule_pp_small_batches, rule_ep_low})
    for (std::string& s : f(d)) rules.push_back(std::move(s));
  rules.push_back(rule_tp_ep_vs_dp_ep(d));
  for (const std::string& r : rules) std::printf("  - %s\n", r.c_str());
  return 0;
}

}  // namespace troupe
