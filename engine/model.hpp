// A decoder-only transformer (Llama, Qwen2, Qwen3, Mixtral, Qwen2-MoE, Qwen3-MoE) written once against
// the Backend seam: weights loaded from Hugging Face files into the backend's memory, and a forward
// pass over a StepBatch that reads and writes a paged KV cache.
#pragma once

#include <functional>
#include <memory>

#include "config/model_config.hpp"
#include "engine/backend.hpp"
#include "engine/kv_cache.hpp"
#include "engine/safetensors.hpp"
#include "engine/step_batch.hpp"

namespace troupe {

// Called while weights load: bytes read so far and the total.
using LoadProgress = std::function<void(uint64_t done, uint64_t total)>;

class Model {
 public:
  // max_positions bounds the rope table (and so the longest sequence); 0 means the config's
  // max_position_embeddings.
  Model(ModelConfig config, const WeightFiles& weights, Backend& backend, int max_positions = 0,
        const LoadProgress& progress = {});
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& config() const { return config_; }
  Backend& backend() const { return backend_; }
  int max_positions() const { return max_positions_; }

  KvCache allocate_kv_cache(int num_blocks, int block_size) const;

  // Runs every layer over the batch's new tokens, writing their k and v into `cache`. Returns the
  // logits of the rows in batch.logits_indices: [rows, vocab_size] in the backend's compute dtype.
  Tensor forward(const StepBatch& batch, const KvCache& cache);

 private:
  struct Weights;
  ModelConfig config_;
  Backend& backend_;
  int max_positions_;
  std::unique_ptr<Weights> weights_;
};

}  // namespace troupe
