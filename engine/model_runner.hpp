// What one worker does with a micro-batch: run its model shard's forward pass over its KV cache and,
// on the last pipeline stage's first tensor-parallel rank, sample each sequence's next token. Holds
// the per-sequence sampler state (seeds, penalty counts) across steps, as a model runner does in vLLM.
#pragma once

#include <memory>
#include <unordered_map>

#include "engine/decode_graphs.hpp"
#include "engine/logits_sampler.hpp"
#include "engine/model.hpp"
#include "engine/step_plan.hpp"

namespace troupe {

class ModelRunner {
 public:
  // `model` must use `backend`. The runner owns both. `sampler` null: sampling on the host.
  ModelRunner(std::unique_ptr<Backend> backend, std::unique_ptr<Model> model,
              std::unique_ptr<LogitsSampler> sampler = nullptr);
  ~ModelRunner();

  Model& model() { return *model_; }
  Backend& backend() { return *backend_; }
  // This rank turns logits into tokens (last stage, tensor-parallel rank 0).
  bool samples() const { return model_->shard().last_stage() && model_->shard().tp_rank == 0; }

  // Bytes one KV block takes on this rank (k and v of its layers and kv heads).
  int64_t kv_bytes_per_block(int block_size) const;
  // Also sizes the model's input buffers for `max_batched_tokens` (so decode graphs, once captured,
  // stay valid).
  // `eager`: no decode graphs (vLLM's --enforce-eager).
  void allocate_kv_cache(int num_blocks, int block_size, int max_batched_tokens = 0, int max_seqs = 0, bool eager = false);
  int num_blocks() const { return cache_.num_blocks; }

  // Runs the plan's batch. The result carries sampled tokens on the sampling rank, nothing elsewhere.
  StepResult run(const StepPlan& plan, const ForwardHooks& hooks = {});

 private:
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Model> model_;
  KvCache cache_;
  // Pools the hidden states of the plan's embedding sequences into result.embeddings.
  void pool(const StepPlan& plan, const Tensor& hidden, StepResult& result);

  std::unique_ptr<LogitsSampler> sampler_;
  std::unique_ptr<DecodeGraphs> graphs_;  // decode steps as CUDA graphs where the backend has them
  std::unordered_map<SeqId, SequenceSampler> samplers_;
  std::vector<SeqId> row_seqs_;
  std::vector<SequenceSampler*> row_samplers_;
  std::vector<int32_t> row_tokens_;
  std::vector<SampleResult> row_results_;
  // Mean pooling across the chunks of a long prompt: the running sum and the rows seen.
  std::unordered_map<SeqId, std::pair<std::vector<double>, int>> mean_sums_;
};

}  // namespace troupe
