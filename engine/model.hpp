// A decoder-only transformer (Llama, Qwen2, Qwen3, Mixtral, Qwen2-MoE, Qwen3-MoE) written once against
// the Backend and Communicator seams. One Model object is one rank's shard: the layers of its pipeline
// stage, its slice of the attention heads and MLPs (tensor parallel), of the vocabulary (embedding
// and LM head), and of the experts (intermediate slices, or whole experts with expert parallelism).
// Its forward pass reads and writes the rank's paged KV cache and runs the collectives the layout
// needs (vLLM's semantics; see DESIGN.md, "Parallel layout").
#pragma once

#include <functional>
#include <memory>
#include <span>

#include "config/model_config.hpp"
#include "config/parallel_config.hpp"
#include "engine/backend.hpp"
#include "engine/communicator.hpp"
#include "engine/kv_cache.hpp"
#include "engine/safetensors.hpp"
#include "engine/step_batch.hpp"
#include "engine/step_inputs.hpp"

namespace troupe {

// Which shard of the model a rank holds.
struct ModelShard {
  ParallelConfig layout;
  int tp_rank = 0;
  int pp_rank = 0;
  int dp_rank = 0;
  MoeExchange moe_exchange = MoeExchange::all_to_all;  // with expert parallelism across dp ranks

  bool first_stage() const { return pp_rank == 0; }
  bool last_stage() const { return pp_rank == layout.pipeline_parallel_size - 1; }
  // Rank within the stage's MoE group of tp × dp ranks.
  int moe_rank() const { return dp_rank * layout.tensor_parallel_size + tp_rank; }
};

// The groups a rank talks in; null where the group would have one rank.
struct ShardComms {
  Communicator* tp = nullptr;    // the tensor-parallel group
  Communicator* moe = nullptr;   // tp × dp ranks of this stage (MoE layers with dp > 1)
  Communicator* prev = nullptr;  // with the previous stage's rank at the same (dp, tp): it is rank 0
  Communicator* next = nullptr;  // with the next stage's rank at the same (dp, tp): it is rank 1
};

// Observation points for traces and expert load statistics; any may be empty.
struct ForwardHooks {
  // A named span of the forward pass starts (begin) or ends: "moe_dispatch", "moe_combine".
  std::function<void(const char* name, bool begin)> span;
  // The routed experts of this rank's tokens at a decoder layer, [tokens × top_k] ids.
  std::function<void(int layer, std::span<const int32_t> expert_ids)> routing;
  // The router's logits of this rank's tokens at a decoder layer, [tokens × experts] (f32 copies of
  // the compute type), before routing: how close a token's k-th and (k+1)-th experts were.
  std::function<void(int layer, std::span<const float> logits)> router_logits;
  // Run this step without replaying a captured graph: a step whose collectives are timed (a graph
  // replays them without calling the communicator).
  bool eager = false;
};

// Called while weights load: bytes read so far and the total.
using LoadProgress = std::function<void(uint64_t done, uint64_t total)>;

class Model {
 public:
  // max_positions bounds the rope table (and so the longest sequence); 0 means the config's
  // max_position_embeddings. The default shard is the whole model on one rank.
  Model(ModelConfig config, const WeightFiles& weights, Backend& backend, int max_positions = 0,
        const LoadProgress& progress = {}, ModelShard shard = {}, ShardComms comms = {});
  // With `weights` null, vLLM's --load-format dummy: random weights, scaled like the model maker's,
  // generated on the device from the config alone (no file is read).
  Model(ModelConfig config, const WeightFiles* weights, Backend& backend, int max_positions,
        const LoadProgress& progress, ModelShard shard, ShardComms comms);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& config() const { return config_; }
  const ModelShard& shard() const { return shard_; }
  Backend& backend() const { return backend_; }
  int max_positions() const { return max_positions_; }
  LayerRange layers() const { return layers_; }
  int local_kv_heads() const;
  int local_heads() const;
  uint64_t weight_bytes() const;  // of this shard, in backend memory

  // A cache for this shard's layers and kv heads.
  KvCache allocate_kv_cache(int num_blocks, int block_size) const;

  // Runs this shard's layers over the batch's new tokens, writing their k and v into `cache`. The
  // first stage embeds batch.token_ids; later stages receive the hidden states from the previous
  // stage (comms.prev), and every stage but the last sends its output on (comms.next) and returns
  // an empty tensor. The last stage returns the logits of the rows in batch.logits_indices, over the
  // whole vocabulary on every tensor-parallel rank: [rows, vocab_size], compute dtype, and, when
  // `hidden` is given, the final-normed hidden states of batch.embed_indices' rows in it. An empty
  // batch is valid (a data-parallel rank with no work still joins its stage's collectives).
  Tensor forward(const StepBatch& batch, const KvCache& cache, const ForwardHooks& hooks = {}, Tensor* hidden = nullptr);
  // forward() in two halves: prepare() copies the batch into the model's device buffers, run()
  // computes from them. run() does no host-to-device copy of its own (except for expert
  // parallelism across data-parallel ranks), so it can be captured as a CUDA graph and replayed.
  void prepare(const StepBatch& batch);
  Tensor run(const KvCache& cache, const ForwardHooks& hooks = {}, Tensor* hidden = nullptr);
  // Sizes the input buffers, and the backend's scratch of the ops that keep one, for the largest
  // batch to come: a captured graph must never see them move.
  void reserve_inputs(int tokens, int seqs, int blocks_per_seq);
  // Only the backend's scratch, for steps of up to `tokens` tokens: before the KV cache is sized, so
  // that its budget leaves room for them.
  void reserve_scratch(int tokens);
  // Whether MoE layers across data-parallel ranks gather every rank's tokens (without expert
  // parallelism, or with the allgather_reducescatter exchange) rather than exchange pairs all-to-all.
  bool gathers_moe_tokens() const {
    return !shard_.layout.enable_expert_parallel || shard_.moe_exchange == MoeExchange::allgather_reducescatter;
  }
  StepInputBuffers& inputs() { return inputs_; }
  // Whether run() can be captured: MoE layers across data-parallel ranks exchange token counts
  // through the host mid-step, which a captured graph cannot do; and a pipeline stage's graphs of
  // NCCL send/recv failed on the GPU machine (stages capture one after the other), so stages run
  // their decode steps eagerly.
  bool capturable() const { return comms_.moe == nullptr && comms_.prev == nullptr && comms_.next == nullptr; }

 private:
  struct Weights;
  ModelConfig config_;
  ModelShard shard_;
  ShardComms comms_;
  Backend& backend_;
  int max_positions_;
  LayerRange layers_;
  std::unique_ptr<Weights> weights_;
  StepInputBuffers inputs_;
};

}  // namespace troupe
