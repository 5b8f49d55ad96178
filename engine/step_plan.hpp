// What travels down a pipeline for one micro-batch, and what comes back: the batch itself plus the
// per-sequence facts the last stage needs to sample (and nothing a stage must look up elsewhere).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/block_manager.hpp"
#include "engine/sampler.hpp"
#include "engine/step_batch.hpp"

namespace troupe {

// A sequence the last stage has not sampled for yet: its sampler is built from this.
struct NewSequence {
  SeqId id = 0;
  SamplingParams params;
  std::vector<int32_t> prompt;  // for the repetition penalty
  std::vector<int32_t> eos_token_ids;
};

// How an embedding sequence turns its hidden states into one vector (then L2-normalised).
enum class Pooling : uint8_t { none, last, mean };

struct StepPlan {
  uint64_t micro_batch = 0;  // this scheduler's count of plans sent
  uint64_t step = 0;         // global step, equal across data-parallel ranks that step together
  int dp_rank = 0;
  StepBatch batch;
  std::vector<SeqId> seqs;       // in batch order
  std::vector<int32_t> chunk;    // new tokens of each sequence in this step
  std::vector<uint8_t> samples;  // whether the sequence's last row gives a token (in logits_indices order)
  std::vector<uint8_t> embed;      // Pooling of each sequence (none for generation)
  std::vector<uint8_t> completes;  // the chunk reaches the sequence's last known token
  std::vector<NewSequence> new_seqs;
  std::vector<SeqId> released;   // finished or aborted since the last plan: forget their samplers

  bool empty() const { return seqs.empty(); }
};

struct SampledToken {
  SeqId seq = 0;
  int32_t token = 0;
  FinishReason finish = FinishReason::none;
  float logprob = 0.0f;
  std::vector<TokenLogprob> top;  // when the request asked for logprobs
};

struct PooledEmbedding {
  SeqId seq = 0;
  std::vector<float> values;  // L2-normalised
};

struct StepResult {
  uint64_t micro_batch = 0;
  std::vector<SampledToken> tokens;  // one per sampling sequence, in plan order
  std::vector<PooledEmbedding> embeddings;  // embedding sequences whose prompt this step finished
  std::string error;                 // non-empty when the step failed
};

}  // namespace troupe
