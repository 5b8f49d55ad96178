// Decode steps as captured graphs (CUDA graphs on the GPU): a step of a small model is hundreds of
// short kernels whose launches cost more than their work, so each batch size is captured once and
// then replayed as one launch. Batches are padded up to the next captured size with sequences that
// write no KV (slot −1) and whose logits are dropped.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "engine/model.hpp"

namespace troupe {

class DecodeGraphs {
 public:
  // `max_context_len`: the longest context a replay may see (the model's positions, typically).
  DecodeGraphs(Model& model, int max_context_len, std::vector<int> sizes = {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256});

  // The logits of a pure decode batch (every sequence one new token) through a replayed graph, or
  // nothing when the backend has no graphs or the batch is not one this serves (then run it eagerly).
  std::optional<Tensor> forward(const StepBatch& batch, const KvCache& cache);
  // Captures every size now (a server does it at start-up, so no request waits for it); forward()
  // captures again only when the model's input buffers or the cache moved. Every rank of a group
  // must capture at the same time (the warm-up runs join their collectives). False when this model
  // or backend has no graphs.
  bool capture(const KvCache& cache, int block_size);

 private:
  struct Captured {
    std::shared_ptr<void> graph;
    Tensor logits;
    uint64_t generation = 0;  // of the model's input buffers
    uint64_t workspace = 0;   // of the backend's scratch
    const void* cache = nullptr;
  };
  Model& model_;
  int max_context_len_;
  std::vector<int> sizes_;
  std::map<int, Captured> graphs_;
  bool unsupported_ = false;
};

}  // namespace troupe
