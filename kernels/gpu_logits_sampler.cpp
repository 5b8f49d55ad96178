#include "kernels/gpu_logits_sampler.hpp"

#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/gpu_sampler.hpp"

namespace troupe {
namespace {

class GpuLogitsSampler final : public LogitsSampler {
 public:
  GpuLogitsSampler(Backend& backend, int vocab, int penalty_slots) : sampler_(backend, vocab, penalty_slots) {
    for (int s = penalty_slots - 1; s >= 0; --s) free_slots_.push_back(s);
  }

  void sample(const Tensor& logits, std::span<const SeqId> seqs, std::span<SequenceSampler* const> samplers,
              std::span<int32_t> tokens, std::span<SampleResult> results) override {
    rows_.resize(samplers.size());
    for (size_t r = 0; r < samplers.size(); ++r) {
      SequenceSampler& s = *samplers[r];
      GpuSampleRow& row = rows_[r];
      row.params = &s.params();
      row.u = s.params().greedy() ? 0.0 : s.draw_uniform();
      row.penalty_slot = s.params().has_penalties() ? slot_of(seqs[r], s) : -1;
      row.masked = s.masked_now();
    }
    sampler_.sample(logits, rows_, tokens, results);
  }

  void release(SeqId seq) override {
    auto it = slots_.find(seq);
    if (it == slots_.end()) return;
    free_slots_.push_back(it->second);
    slots_.erase(it);
  }

 private:
  // The device slot holding a sequence's penalty history, begun from its prompt on first use.
  int32_t slot_of(SeqId seq, const SequenceSampler& sampler) {
    auto it = slots_.find(seq);
    if (it != slots_.end()) return it->second;
    if (free_slots_.empty())
      throw std::runtime_error("more than " + std::to_string(sampler_.penalty_slots()) +
                               " running sequences use penalties; raise the GPU sampler's penalty slots");
    const int32_t slot = free_slots_.back();
    free_slots_.pop_back();
    sampler_.begin_sequence(slot, sampler.prompt_tokens());
    slots_.emplace(seq, slot);
    return slot;
  }

  GpuSampler sampler_;
  std::vector<GpuSampleRow> rows_;
  std::unordered_map<SeqId, int32_t> slots_;
  std::vector<int32_t> free_slots_;
};

}  // namespace

std::unique_ptr<LogitsSampler> make_gpu_logits_sampler(Backend& backend, int vocab, int penalty_slots) {
  return std::make_unique<GpuLogitsSampler>(backend, vocab, penalty_slots);
}

}  // namespace troupe
