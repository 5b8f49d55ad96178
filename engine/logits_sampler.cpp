#include "engine/logits_sampler.hpp"

#include <vector>

namespace troupe {
namespace {

class HostLogitsSampler final : public LogitsSampler {
 public:
  HostLogitsSampler(Backend& backend, int vocab) : backend_(backend), vocab_(vocab) {}

  void sample(const Tensor& logits, std::span<const SeqId>, std::span<SequenceSampler* const> samplers,
              std::span<int32_t> tokens, std::span<SampleResult> results) override {
    host_.resize(samplers.size() * vocab_);
    backend_.download(logits, host_.data());
    sample_batch(host_, vocab_, samplers, tokens, results);
  }

 private:
  Backend& backend_;
  size_t vocab_;
  std::vector<float> host_;
};

}  // namespace

std::unique_ptr<LogitsSampler> make_host_logits_sampler(Backend& backend, int vocab) {
  return std::make_unique<HostLogitsSampler>(backend, vocab);
}

}  // namespace troupe
