#include "tools/layout_plan.hpp"

#include <algorithm>
#include <limits>

#include "config/error.hpp"
#include "engine/weight_slices.hpp"

namespace troupe {
namespace {

// The CUDA backend's caching allocator (kernels/device_memory.cpp): at least 16 bytes, then 512-byte
// steps below 1 MiB and 2 MiB steps above.
uint64_t size_class(uint64_t bytes) {
  constexpr uint64_t small = 512, large = uint64_t{2} << 20, threshold = uint64_t{1} << 20;
  bytes = std::max<uint64_t>(bytes, 16);
  return bytes < threshold ? (bytes + small - 1) / small * small : (bytes + large - 1) / large * large;
}

// How many ways each routed expert's intermediate dimension is split (1 with expert parallelism).
int expert_mlp_ways(const ModelShard& s) {
  if (s.layout.enable_expert_parallel) return 1;
  return s.layout.data_parallel_size > 1 ? s.layout.moe_group_size() : s.layout.tensor_parallel_size;
}

// Adds up the tensors Model's loader allocates, exactly and as the CUDA allocator reserves them.
struct Tally {
  DType dtype;
  RankWeights weights;
  uint64_t device = 0;

  void add(uint64_t RankWeights::*category, int64_t elements) {
    const uint64_t bytes = static_cast<uint64_t>(elements) * dtype_size(dtype);
    weights.*category += bytes;
    device += size_class(bytes);
  }
};

// The tensors of engine/model.cpp's Model constructor, in its order.
Tally tally_weights(const ModelConfig& c, const ModelShard& shard, DType dtype) {
  const ShardPlan s(c, shard);
  const int64_t h = c.hidden_size, d = c.head_dim;
  const int64_t vocab = s.vocab_rows;
  Tally t{dtype, {}, 0};
  constexpr auto dense = &RankWeights::non_moe;
  constexpr auto routed = &RankWeights::routed;
  constexpr auto shared = &RankWeights::shared;

  const bool embed = shard.first_stage() || (shard.last_stage() && c.tie_word_embeddings);
  if (embed) t.add(dense, vocab * h);
  const int64_t q = s.q_heads.size() * d, kv = s.kv_heads.size() * d;
  const LayerRange layers = stage_layers(c.num_layers, shard.layout.pipeline_parallel_size, shard.pp_rank);
  for (int l = layers.begin; l < layers.end; ++l) {
    t.add(dense, h);  // input_layernorm
    t.add(dense, h);  // post_attention_layernorm
    t.add(dense, (q + 2 * kv) * h);
    if (c.attention_bias) t.add(dense, q + 2 * kv);
    t.add(dense, h * q);  // o_proj
    // A row-parallel bias is added once, by tensor-parallel rank 0.
    if (c.attention_output_bias && shard.tp_rank == 0) t.add(dense, h);
    if (c.qk_norm) {
      t.add(dense, d);
      t.add(dense, d);
    }
    if (c.is_moe_layer(l)) {
      const int64_t e = s.experts.size(), il = s.expert_mlp.size();
      t.add(dense, c.num_experts * h);  // the router, whole on every rank
      t.add(routed, e * 2 * il * h);
      t.add(routed, e * h * il);
      if (c.has_shared_expert()) {
        const int64_t sl = s.shared_mlp.size();
        t.add(shared, 2 * sl * h);
        t.add(shared, h * sl);
        t.add(shared, h);  // shared_expert_gate
      }
    } else {
      const int64_t ml = s.mlp.size();
      t.add(dense, 2 * ml * h);
      t.add(dense, h * ml);
    }
  }
  if (shard.last_stage()) {
    t.add(dense, h);  // model.norm
    if (!c.tie_word_embeddings) t.add(dense, vocab * h);  // tied: the embedding above serves
  }
  return t;
}

double bytes_of(DType dtype) { return static_cast<double>(dtype_size(dtype)); }

std::vector<CommOp> communication(const ModelConfig& c, const ParallelConfig& p, DType dtype, MoeExchange exchange) {
  const int tp = p.tensor_parallel_size, pp = p.pipeline_parallel_size, dp = p.data_parallel_size;
  const double hidden = c.hidden_size * bytes_of(dtype);
  int moe_layers = 0;
  for (int l = 0; l < c.num_layers; ++l) moe_layers += c.is_moe_layer(l) ? 1 : 0;
  const int dense_layers = c.num_layers - moe_layers;
  std::vector<CommOp> ops;
  if (tp > 1) {
    // Vocab-parallel embedding: rows outside a rank's slice embed as zeros, the all-reduce fills them.
    ops.push_back({"embedding", "all_reduce", "tp", tp, 1, hidden, 1.0});
    ops.push_back({"attention", "all_reduce", "tp", tp, c.num_layers, hidden, 1.0});
    if (dense_layers > 0) ops.push_back({"mlp", "all_reduce", "tp", tp, dense_layers, hidden, 1.0});
    // Routed (and shared) experts' partial sums; with dp == 1 this is all the MoE communication.
    if (moe_layers > 0) ops.push_back({"moe", "all_reduce", "tp", tp, moe_layers, hidden, 1.0});
  }
  if (c.is_moe() && dp > 1 && moe_layers > 0) {
    const int g = p.moe_group_size();
    if (!p.enable_expert_parallel || exchange == MoeExchange::allgather_reducescatter) {
      // Tensor-parallel rank 0 of each replica contributes its tokens; every rank gets all of them.
      ops.push_back({"moe_dispatch", "all_gather", "moe", g, moe_layers, hidden, 1.0});
      ops.push_back({"moe_combine", "reduce_scatter", "moe", g, moe_layers, hidden, 1.0});
    } else {
      // Each (token, expert) pair travels with its hidden row, expert id (i32) and weight (f32).
      const double k = c.num_experts_per_tok, off = static_cast<double>(g - 1) / g;
      ops.push_back({"moe_dispatch", "all_to_all", "moe", g, moe_layers, k * (hidden + 8), off});
      ops.push_back({"moe_combine", "all_to_all", "moe", g, moe_layers, k * hidden, off});
    }
  }
  if (pp > 1) ops.push_back({"stage_boundary", "send_recv", "pp", 2, pp - 1, hidden, 1.0});
  if (tp > 1)
    ops.push_back({"lm_head", "all_gather", "tp", tp, 1,
                   static_cast<double>(tp) * vocab_rows_per_rank(c, tp) * bytes_of(dtype), 1.0});
  return ops;
}

ExpertDensity expert_density(const ModelConfig& c, const ParallelConfig& p) {
  ExpertDensity x;
  if (!c.is_moe()) return x;
  const int e = c.num_experts, k = c.num_experts_per_tok;
  x.per_layer = static_cast<double>(k) / e;
  if (!p.enable_expert_parallel) {
    x.experts_per_rank = e;
    x.local_fraction = 1.0;
    x.rank_touch_probability = 1.0;
    return x;
  }
  const int g = p.moe_group_size(), local = e / g;
  x.experts_per_rank = local;
  x.local_fraction = static_cast<double>(local) / e;
  // 1 - P(none of the k distinct experts is local) = 1 - C(e - local, k) / C(e, k).
  double none = 1.0;
  for (int i = 0; i < k; ++i) none *= static_cast<double>(e - local - i) / (e - i);
  x.rank_touch_probability = 1.0 - std::max(0.0, none);
  return x;
}

}  // namespace

int64_t vocab_rows_per_rank(const ModelConfig& c, int tp) {
  return ShardPlan(c, ModelShard{ParallelConfig{tp, 1, 1, false}, 0, 0, 0}).vocab_rows;  // Model's own rule
}

RankWeights rank_weights(const ModelConfig& c, const ModelShard& shard, DType dtype) {
  return tally_weights(c, shard, dtype).weights;
}

int64_t kv_bytes_per_block(const ModelConfig& c, const ModelShard& shard, DType dtype, int block_size) {
  const LayerRange layers = stage_layers(c.num_layers, shard.layout.pipeline_parallel_size, shard.pp_rank);
  return 2LL * (layers.end - layers.begin) * block_size * ShardPlan(c, shard).kv_heads.size() * c.head_dim *
         static_cast<int64_t>(dtype_size(dtype));
}

LayoutPlan plan_layout(const ModelConfig& c, const ParallelConfig& p, const PlanHardware& hw) {
  LayoutPlan plan;
  plan.parallel = p;
  try {
    plan.warnings = validate_parallel_config(p, c);
  } catch (const ConfigError& e) {
    plan.error = e.what();
    return plan;
  }
  plan.valid = true;
  const int tp = p.tensor_parallel_size, pp = p.pipeline_parallel_size, dp = p.data_parallel_size;
  plan.kv_replication = c.num_kv_heads < tp ? tp / c.num_kv_heads : 1;
  const int wanted_len = hw.max_model_len > 0 ? hw.max_model_len : c.max_position_embeddings;
  // actors/worker.cpp: the reserve for the largest step's activations and logits.
  const int64_t reserve = (int64_t{1} << 30) +
                          int64_t{hw.max_num_batched_tokens} * (16 * c.hidden_size + 4 * c.intermediate_size) * 2 +
                          int64_t{hw.max_num_seqs} * c.vocab_size * 8;
  const uint64_t rope = 2 * size_class(static_cast<uint64_t>(wanted_len) * (c.head_dim / 2) * 4);
  const int64_t share = static_cast<int64_t>(static_cast<double>(hw.gpu_memory_bytes) * hw.gpu_memory_utilization);

  for (int d = 0; d < dp; ++d)
    for (int s = 0; s < pp; ++s)
      for (int t = 0; t < tp; ++t) {
        RankPlan r;
        r.shard = {p, t, s, d};
        r.rank = p.rank(d, s, t);
        r.layers = stage_layers(c.num_layers, pp, s);
        const ShardPlan sl(c, r.shard);
        r.heads = static_cast<int>(sl.q_heads.size());
        r.kv_heads = static_cast<int>(sl.kv_heads.size());
        if (c.is_moe()) {
          r.expert_begin = static_cast<int>(sl.experts.begin);
          r.expert_end = static_cast<int>(sl.experts.end);
          r.expert_slice = expert_mlp_ways(r.shard);
        }
        const Tally tally = tally_weights(c, r.shard, hw.dtype);
        r.weights = tally.weights;
        r.weight_device_bytes = tally.device;
        r.rope_bytes = rope;
        // The GPU sampler (last stage, tensor-parallel rank 0) keeps penalty counts for 64 sequences.
        const bool samples = r.shard.last_stage() && t == 0;
        r.sampler_bytes = samples ? (uint64_t{64} * c.vocab_size * 4 + (uint64_t{2} << 20) - 1) / (uint64_t{2} << 20) *
                                        (uint64_t{2} << 20)
                                  : 0;
        r.used_bytes = static_cast<int64_t>(r.weight_device_bytes + r.rope_bytes + r.sampler_bytes) + hw.context_overhead_bytes;
        r.activation_reserve_bytes = reserve;
        r.kv_budget_bytes = std::max<int64_t>(0, share - r.used_bytes - reserve);
        r.kv_bytes_per_block = kv_bytes_per_block(c, r.shard, hw.dtype, hw.block_size);
        r.kv_blocks = r.kv_bytes_per_block > 0 ? r.kv_budget_bytes / r.kv_bytes_per_block : 0;
        plan.ranks.push_back(r);
      }
  std::sort(plan.ranks.begin(), plan.ranks.end(), [](const RankPlan& a, const RankPlan& b) { return a.rank < b.rank; });

  // actors/runtime.cpp: each replica gets the blocks its tightest worker holds; the capacity is the
  // smallest replica's.
  int64_t smallest = std::numeric_limits<int64_t>::max();
  for (int d = 0; d < dp; ++d) {
    int64_t blocks = std::numeric_limits<int32_t>::max();
    for (int s = 0; s < pp; ++s)
      for (int t = 0; t < tp; ++t) blocks = std::min(blocks, plan.ranks[p.rank(d, s, t)].kv_blocks);
    plan.replica_kv_tokens.push_back(blocks * hw.block_size);
    smallest = std::min(smallest, blocks);
  }
  plan.kv_tokens = smallest * hw.block_size;
  if (smallest < 1) {
    plan.fit_error = "the KV cache budget holds no block; raise --kv-cache-memory";
  } else if (hw.max_model_len > 0 && hw.max_model_len > plan.kv_tokens) {
    plan.fit_error = "--max-model-len (" + std::to_string(hw.max_model_len) + ") exceeds the " +
                     std::to_string(plan.kv_tokens) +
                     " tokens the KV cache holds; lower it or give the cache more memory";
  }
  plan.max_model_len = static_cast<int>(std::min<int64_t>(wanted_len, plan.kv_tokens));
  plan.comms = communication(c, p, hw.dtype, hw.moe_exchange);
  plan.experts = expert_density(c, p);
  return plan;
}

std::vector<ParallelConfig> layouts_for(const ModelConfig& c, int gpus) {
  std::vector<ParallelConfig> out;
  for (int tp = gpus; tp >= 1; --tp) {
    if (gpus % tp != 0) continue;
    for (int pp = gpus / tp; pp >= 1; --pp) {
      if ((gpus / tp) % pp != 0) continue;
      const int dp = gpus / tp / pp;
      out.push_back({tp, pp, dp, false});
      if (c.is_moe()) out.push_back({tp, pp, dp, true});
    }
  }
  return out;
}

}  // namespace troupe
