// A step's batch on the device, in buffers that live as long as the model: what a forward pass
// reads. Because the addresses never change, a decode step can be captured once as a CUDA graph and
// replayed with new contents (prepare() only copies; it never allocates once the buffers are big
// enough).
#pragma once

#include <cstdint>

#include "engine/backend.hpp"
#include "engine/step_batch.hpp"

namespace troupe {

struct StepInputs {
  Tensor token_ids;       // [T] ids in this rank's vocabulary slice, -1 for ids of other ranks
  Tensor logits_indices;  // [R]
  Tensor embed_indices;   // [E]
  AttentionMetadata meta;
  int num_logits = 0;
  int num_embeds = 0;
};

class StepInputBuffers {
 public:
  explicit StepInputBuffers(Backend& backend) : backend_(backend) {}

  // Copies the batch into the buffers (growing them when too small) and returns views of the
  // batch's size. Ids outside [vocab_begin, vocab_end) become -1; the others are shifted by
  // vocab_begin (a vocabulary-parallel embedding's local rows).
  const StepInputs& prepare(const StepBatch& batch, int64_t vocab_begin, int64_t vocab_end);
  const StepInputs& current() const { return inputs_; }
  // Grows the buffers to hold at least this much, so later prepare() calls never allocate.
  void reserve(int tokens, int seqs, int blocks_per_seq);
  // Counts reallocations: a graph captured on the buffers is stale once it changes.
  uint64_t generation() const { return generation_; }
  // Claims a longer context than the batch has, for a graph that must serve longer ones (the decode
  // attention's split count is fixed at capture).
  void set_max_context_len(int n) { inputs_.meta.max_context_len = n; }

 private:
  Backend& backend_;
  int tokens_ = 0, seqs_ = 0, blocks_ = 0;
  Tensor token_ids_, positions_, slots_, query_start_, context_lens_, block_tables_, logits_, embeds_;
  // Host contents the batch does not hold as they are, kept until the uploads are queued.
  std::vector<int32_t> local_ids_, tables_;
  std::vector<Backend::Upload> uploads_;
  uint64_t generation_ = 0;
  StepInputs inputs_;
};

}  // namespace troupe
