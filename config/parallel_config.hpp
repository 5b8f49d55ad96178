// How a model is laid out over devices, with vLLM's flags: tensor (tp), pipeline (pp) and data (dp)
// parallel sizes and the expert-parallel switch. world = tp × pp × dp; ranks are numbered with dp
// outermost, then pp, then tp (so a TP group is contiguous devices).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/model_config.hpp"

namespace troupe {

// How the ranks of an MoE group that spans data-parallel ranks with expert parallelism exchange
// tokens (vLLM's --all2all-backend). all_to_all: each (token, expert) pair travels to its expert's
// rank and back; the pairs' counts cross the host at every MoE layer. allgather_reducescatter: every
// rank gathers all the group's tokens (their counts cross the host once per step), computes its own
// experts' part for all of them, and a reduce-scatter sums the parts back onto each token's rank.
enum class MoeExchange : uint8_t { all_to_all, allgather_reducescatter };
// --all2all-backend's value: "all_to_all" or "allgather_reducescatter"; ConfigError naming the flag.
MoeExchange parse_moe_exchange(const std::string& name);

struct ParallelConfig {
  int tensor_parallel_size = 1;
  int pipeline_parallel_size = 1;
  int data_parallel_size = 1;
  bool enable_expert_parallel = false;

  int world_size() const { return tensor_parallel_size * pipeline_parallel_size * data_parallel_size; }
  // The group over which a stage's MoE layers exchange tokens or expert shards: tp × dp ranks.
  int moe_group_size() const { return tensor_parallel_size * data_parallel_size; }
  int rank(int dp, int pp, int tp) const {
    return (dp * pipeline_parallel_size + pp) * tensor_parallel_size + tp;
  }
  // "tp2·pp2", "dp2+ep", "tp1": how layouts are named in logs, traces and benchmark tables.
  std::string name() const;
};

// Checks the layout against the model before any weight is read. Throws ConfigError with a message
// a user can act on; returns warnings (a flag that changes nothing for this model) to print.
std::vector<std::string> validate_parallel_config(const ParallelConfig& parallel, const ModelConfig& model);

// Decoder layers [begin, end) of pipeline stage `stage`: contiguous, sizes differing by at most one.
struct LayerRange {
  int begin = 0;
  int end = 0;
};
LayerRange stage_layers(int num_layers, int pp_size, int stage);

}  // namespace troupe
