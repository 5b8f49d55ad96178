// What a parallel layout costs per GPU, from config.json alone (no weights, no GPU): the weight bytes
// each rank allocates, the KV cache the runtime would size from what is left, the collectives a token
// passes through, and how densely the experts are used. The rules mirror the engine's
// (engine/model.cpp's shard slicing, actors/worker.cpp's KV budget, engine/model_runner.cpp's KV block
// size); tests/plan_test.cpp checks the weight and KV figures against Model objects on the CPU backend.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/model_config.hpp"
#include "config/parallel_config.hpp"
#include "engine/dtype.hpp"
#include "engine/model.hpp"

namespace troupe {

// The GPU and the engine flags the KV cache is sized for (the engine flags of the same names).
struct PlanHardware {
  int64_t gpu_memory_bytes = int64_t{80} << 30;  // what the device reports as total (an H100 80GB: ~79.1 GiB)
  double gpu_memory_utilization = 0.9;
  DType dtype = DType::bf16;  // of weights, activations and KV: the CUDA backend's (the CPU backend's is f32)
  int block_size = 16;
  int max_num_batched_tokens = 2048;
  int max_num_seqs = 256;
  int max_model_len = 0;  // 0: the model's max_position_embeddings
  MoeExchange moe_exchange = MoeExchange::all_to_all;  // --all2all-backend: EP across dp ranks
  // Device memory in use before any tensor of ours: the CUDA context and loaded kernel images,
  // cuBLASLt's 32 MiB workspace. An estimate (not measured by this tool).
  int64_t context_overhead_bytes = int64_t{512} << 20;
};

// Weight bytes of one rank, as Model::weight_bytes() counts them (every tensor the loader allocates).
struct RankWeights {
  uint64_t non_moe = 0;  // attention, norms, embedding and LM head slices, dense MLPs, MoE routers
  uint64_t routed = 0;   // routed experts (whole with expert parallelism, else intermediate slices)
  uint64_t shared = 0;   // shared experts and their gates
  uint64_t total() const { return non_moe + routed + shared; }
};

struct RankPlan {
  ModelShard shard;
  int rank = 0;
  LayerRange layers;
  int heads = 0;
  int kv_heads = 0;
  int expert_begin = 0, expert_end = 0;  // routed experts held: a range with EP, all without
  int expert_slice = 1;                  // without EP each expert's intermediate dimension is split this many ways
  RankWeights weights;
  // Device memory before the KV cache, as the runtime's `used` sees it: weights rounded to the CUDA
  // allocator's size classes, the rope tables, the GPU sampler's penalty counts, the context overhead.
  uint64_t weight_device_bytes = 0;
  uint64_t rope_bytes = 0;
  uint64_t sampler_bytes = 0;
  int64_t used_bytes = 0;
  int64_t activation_reserve_bytes = 0;  // the runtime's reserve for the largest step's activations and logits
  int64_t kv_budget_bytes = 0;
  int64_t kv_bytes_per_block = 0;  // at hardware.block_size
  int64_t kv_blocks = 0;
};

// One collective (or send/recv) of a forward pass, per token of a data-parallel replica's batch.
struct CommOp {
  std::string where;  // embedding, attention, mlp, moe, moe_dispatch, moe_combine, stage_boundary, lm_head
  std::string kind;   // all_reduce, all_gather, reduce_scatter, all_to_all, send_recv
  std::string group;  // tp, moe (the stage's tp × dp ranks), pp (neighbouring stages)
  int group_size = 0;
  int count = 0;  // times per forward pass through the whole model (layers it runs at; 1; pp - 1)
  // Bytes of the collective's buffer per token: the all-reduced tensor, the gathered/scattered rows,
  // the rows sent (for the LM head: per token that gets logits, every rank's vocabulary slice).
  double bytes_per_token = 0;
  // Of those, the share expected to leave the rank (all-to-all with uniform routing); 1 otherwise.
  double off_rank_fraction = 1.0;
};

struct ExpertDensity {
  double per_layer = 0;         // k / E: share of a layer's routed experts one token activates
  int experts_per_rank = 0;     // whole experts with EP; E (each sliced) without
  double local_fraction = 0;    // expected share of a token's k experts held by a given rank (EP: 1/(tp × dp))
  double rank_touch_probability = 0;  // chance a token needs a given rank's experts at all (EP); 1 without
};

struct LayoutPlan {
  ParallelConfig parallel;
  bool valid = false;
  std::string error;  // validate_parallel_config's message when invalid
  std::vector<std::string> warnings;
  std::vector<RankPlan> ranks;  // every rank, in rank order (empty when invalid)
  int kv_replication = 1;  // ranks holding each KV head: tp / kv heads when tp exceeds them
  std::vector<int64_t> replica_kv_tokens;  // per DP replica: min over its workers of blocks × block size
  int64_t kv_tokens = 0;       // the runtime's capacity: the smallest replica's
  int max_model_len = 0;       // what the server would serve: min(wanted, capacity)
  std::string fit_error;       // the runtime's start-up error when the KV cache does not fit, else empty
  std::vector<CommOp> comms;
  ExpertDensity experts;
};

// Tensor-parallel vocabulary rows each rank allocates (zero-padded to the same count on all ranks).
int64_t vocab_rows_per_rank(const ModelConfig& c, int tp);
// Exactly the weight bytes Model allocates for `shard` in `dtype`.
RankWeights rank_weights(const ModelConfig& c, const ModelShard& shard, DType dtype);
// ModelRunner::kv_bytes_per_block for this shard.
int64_t kv_bytes_per_block(const ModelConfig& c, const ModelShard& shard, DType dtype, int block_size);

LayoutPlan plan_layout(const ModelConfig& c, const ParallelConfig& parallel, const PlanHardware& hw);

// Every tp × pp × dp factorisation of `gpus` (tp largest first), each with and without
// --enable-expert-parallel for MoE models.
std::vector<ParallelConfig> layouts_for(const ModelConfig& c, int gpus);

}  // namespace troupe
