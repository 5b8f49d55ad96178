// What `troupe sweep` measured, as sweep.json holds it and `troupe advise` reads it back: per layout
// its server's KV cache and one point per concurrency with the figures of `troupe bench serve`; and
// what follows from them: the winner at each concurrency (highest output throughput, lowest TTFT
// p50), the crossovers (where the throughput winner changes) and the regimes (runs of consecutive
// concurrencies with the same winner).
#pragma once

#include <boost/json/object.hpp>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "config/parallel_config.hpp"

namespace troupe {

struct SweepPoint {
  int concurrency = 0;
  std::string file;  // the point's bench result, relative to the sweep's folder
  int num_prompts = 0, completed = 0, failed = 0;
  double duration_s = 0;
  double output_throughput = 0, total_token_throughput = 0, request_throughput = 0;  // tok/s, tok/s, req/s
  double mean_ttft_ms = 0, median_ttft_ms = 0, p99_ttft_ms = 0;
  double mean_tpot_ms = 0, median_tpot_ms = 0, p99_tpot_ms = 0;
  double median_itl_ms = 0, median_e2el_ms = 0;
  std::optional<double> kv_cache_usage_peak, prefix_cache_hit_rate, communication_share;  // fractions
  double preemptions = 0;
  std::map<std::string, int> failures;
  bool ok() const { return completed > 0; }
};

struct SweepLayout {
  ParallelConfig parallel;
  std::string status = "ok";  // ok, failed (its server did not start or died), incomplete (points missing)
  std::string error;          // why it failed
  std::string log_tail;       // the server's stderr tail when it failed
  std::string log_file;       // relative to the sweep's folder
  std::vector<int64_t> kv_blocks_per_replica;  // KV blocks of each worker, per data-parallel replica
  int block_size = 16;
  std::vector<SweepPoint> points;  // in concurrency order

  std::string name() const { return parallel.name(); }
  std::optional<int64_t> kv_blocks_per_gpu() const;  // the smallest replica's
  std::optional<int64_t> kv_tokens() const;          // Σ over replicas of blocks × block size
  const SweepPoint* at(int concurrency) const;       // an ok point, else null
};

struct SweepData {
  std::string model_dir, architecture, device, load_format;
  int gpus = 0;
  int input_len = 0, output_len = 0;
  std::vector<int> concurrency;
  std::vector<std::string> server_args;
  std::vector<SweepLayout> layouts;
};

struct SweepWinner {
  int concurrency = 0;
  std::string throughput_layout;  // highest output token throughput
  double output_throughput = 0;
  std::string ttft_layout;  // lowest median TTFT
  double median_ttft_ms = 0;
};
// One per concurrency at which some layout has an ok point, in concurrency order.
std::vector<SweepWinner> sweep_winners(const SweepData& d);

struct SweepCrossover {
  int below = 0, above = 0;  // the concurrencies between which the throughput winner changes
  std::string from, to;
};
std::vector<SweepCrossover> sweep_crossovers(const std::vector<SweepWinner>& winners);

// Consecutive winners with the same layout: [first, last] index into `winners`.
struct SweepRegime {
  size_t first = 0, last = 0;
  std::string layout;
};
std::vector<SweepRegime> sweep_regimes(const std::vector<SweepWinner>& winners, bool by_ttft);

// Parses "tp4", "tp2·pp2", "tp2.pp2", "tp2*pp2", "dp4+ep" (any order of parts, sizes 1 when
// absent). Throws ConfigError naming the text.
ParallelConfig parse_layout_name(const std::string& text);
// The name with '.' for '·': what files of a layout are called.
std::string layout_file_name(const ParallelConfig& p);

// A point from a `troupe bench serve` result object (its figure keys and its "server" object).
SweepPoint point_from_bench_json(const boost::json::object& result);

boost::json::object sweep_json(const SweepData& d);      // with winners and crossovers
SweepData sweep_from_json(const boost::json::value& v);  // throws std::runtime_error on a malformed file
std::string sweep_csv(const SweepData& d);

}  // namespace troupe
