#include "engine/model_runner.hpp"

#include <stdexcept>

namespace troupe {

ModelRunner::ModelRunner(std::unique_ptr<Backend> backend, std::unique_ptr<Model> model)
    : backend_(std::move(backend)), model_(std::move(model)) {}

ModelRunner::~ModelRunner() = default;

int64_t ModelRunner::kv_bytes_per_block(int block_size) const {
  const LayerRange layers = model_->layers();
  return 2LL * (layers.end - layers.begin) * block_size * model_->local_kv_heads() * model_->config().head_dim *
         static_cast<int64_t>(dtype_size(backend_->compute_dtype()));
}

void ModelRunner::allocate_kv_cache(int num_blocks, int block_size) {
  cache_ = model_->allocate_kv_cache(num_blocks, block_size);
}

StepResult ModelRunner::run(const StepPlan& plan, const ForwardHooks& hooks) {
  StepResult result;
  result.micro_batch = plan.micro_batch;
  if (samples()) {
    for (SeqId id : plan.released) samplers_.erase(id);
    for (const NewSequence& s : plan.new_seqs) samplers_.try_emplace(s.id, s.params, s.prompt, s.eos_token_ids);
  }
  Tensor logits = model_->forward(plan.batch, cache_, hooks);
  if (!samples() || plan.batch.logits_indices.empty()) return result;

  const int vocab = model_->config().vocab_size;
  const size_t rows = plan.batch.logits_indices.size();
  logits_.resize(rows * vocab);
  backend_->download(logits, logits_.data());
  SampleResult sampled;
  size_t row = 0;
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    if (!plan.samples[i]) continue;
    auto it = samplers_.find(plan.seqs[i]);
    if (it == samplers_.end()) throw std::logic_error("no sampler for sequence " + std::to_string(plan.seqs[i]));
    SequenceSampler& sampler = it->second;
    const bool want_logprobs = sampler.params().logprobs.has_value();
    const int32_t token = sampler.sample(std::span(logits_).subspan(row * vocab, vocab), want_logprobs ? &sampled : nullptr);
    SampledToken out{plan.seqs[i], token, sampler.accept(token), 0.0f, {}};
    if (want_logprobs) {
      out.logprob = sampled.logprob;
      out.top = sampled.top;
    }
    result.tokens.push_back(std::move(out));
    ++row;
  }
  return result;
}

}  // namespace troupe
