// Turns a step's logits into tokens, for the rows of the sequences that sample. The seam between
// the model runner and where sampling happens: on the host after downloading the logits (the
// reference, and the CPU backend's way), or on the GPU next to them (kernels/), where only ids cross.
#pragma once

#include <memory>
#include <span>

#include "engine/backend.hpp"
#include "engine/block_manager.hpp"
#include "engine/sampler.hpp"

namespace troupe {

class LogitsSampler {
 public:
  virtual ~LogitsSampler() = default;
  // Row r of `logits` ([rows, vocab], the backend's) belongs to sequence seqs[r], sampled by
  // samplers[r] (whose random stream and history advance as if it had sampled). Fills tokens[r],
  // and results[r] when `results` is not empty. Does not accept() the tokens.
  virtual void sample(const Tensor& logits, std::span<const SeqId> seqs, std::span<SequenceSampler* const> samplers,
                      std::span<int32_t> tokens, std::span<SampleResult> results) = 0;
  // The sequence is gone: forget what was kept for it.
  virtual void release(SeqId seq) { (void)seq; }
};

// Downloads the logits as f32 and samples each row with its SequenceSampler.
std::unique_ptr<LogitsSampler> make_host_logits_sampler(Backend& backend, int vocab);

}  // namespace troupe
