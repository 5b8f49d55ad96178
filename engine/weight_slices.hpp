// Which part of each weight a rank holds: the one place the slicing rules live, for Model's loader
// and for `troupe plan` (tools/layout_plan.cpp), which must count exactly what the loader allocates.
#pragma once

#include <algorithm>
#include <cstdint>

#include "config/model_config.hpp"
#include "engine/model.hpp"

namespace troupe {

// A half-open range of indices along one dimension of a weight.
struct Span {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
};

// Which part of each weight a rank holds: heads, intermediate slices, vocabulary rows, experts.
struct ShardPlan {
  Span q_heads, kv_heads, mlp, shared_mlp, expert_mlp, experts, vocab;
  int64_t vocab_rows = 0;  // rows this rank allocates for its vocabulary slice (equal on all ranks)

  ShardPlan(const ModelConfig& c, const ModelShard& s) {
    const int tp = s.layout.tensor_parallel_size, r = s.tp_rank;
    auto split = [](int64_t n, int parts, int i) { return Span{n * i / parts, n * (i + 1) / parts}; };
    q_heads = split(c.num_heads, tp, r);
    // With more ranks than kv heads each rank holds one kv head, replicated on tp / kv ranks.
    kv_heads = c.num_kv_heads >= tp ? split(c.num_kv_heads, tp, r) : Span{r / (tp / c.num_kv_heads), r / (tp / c.num_kv_heads) + 1};
    mlp = split(c.intermediate_size, tp, r);
    shared_mlp = split(c.shared_expert_intermediate_size, tp, r);
    const int group = s.layout.moe_group_size();
    if (s.layout.enable_expert_parallel) {
      experts = split(c.num_experts, group, s.moe_rank());
      expert_mlp = {0, c.moe_intermediate_size};
    } else {
      experts = {0, c.num_experts};
      const bool across_dp = s.layout.data_parallel_size > 1;
      expert_mlp = split(c.moe_intermediate_size, across_dp ? group : tp, across_dp ? s.moe_rank() : r);
    }
    vocab_rows = (c.vocab_size + tp - 1) / tp;
    vocab = {std::min<int64_t>(c.vocab_size, vocab_rows * r), std::min<int64_t>(c.vocab_size, vocab_rows * (r + 1))};
  }
};

}  // namespace troupe
