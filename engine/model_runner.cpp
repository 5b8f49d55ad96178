#include "engine/model_runner.hpp"

#include <cmath>
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
  Tensor hidden;
  Tensor logits = model_->forward(plan.batch, cache_, hooks, &hidden);
  if (!samples()) return result;
  if (!plan.batch.embed_indices.empty()) pool(plan, hidden, result);
  if (plan.batch.logits_indices.empty()) return result;

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

void ModelRunner::pool(const StepPlan& plan, const Tensor& hidden, StepResult& result) {
  const int h = model_->config().hidden_size;
  std::vector<float> rows(plan.batch.embed_indices.size() * h);
  backend_->download(hidden, rows.data());
  size_t row = 0;
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    const auto pooling = static_cast<Pooling>(plan.embed.empty() ? 0 : plan.embed[i]);
    if (pooling == Pooling::none) continue;
    const int start = plan.batch.query_start[i], end = plan.batch.query_start[i + 1];
    const bool completes = plan.completes[i];
    std::vector<double> pooled(h, 0.0);
    if (pooling == Pooling::last) {
      if (!completes) continue;  // only the final chunk's last row was asked for
      for (int k = 0; k < h; ++k) pooled[k] = rows[row * h + k];
      ++row;
    } else {
      auto& [sum, count] = mean_sums_[plan.seqs[i]];
      sum.resize(h, 0.0);
      for (int r = start; r < end; ++r, ++row)
        for (int k = 0; k < h; ++k) sum[k] += rows[row * h + k];
      count += end - start;
      if (!completes) continue;
      for (int k = 0; k < h; ++k) pooled[k] = sum[k] / count;
      mean_sums_.erase(plan.seqs[i]);
    }
    double norm = 0.0;
    for (double v : pooled) norm += v * v;
    norm = std::sqrt(norm);
    PooledEmbedding out{plan.seqs[i], std::vector<float>(h)};
    for (int k = 0; k < h; ++k) out.values[k] = static_cast<float>(norm > 0 ? pooled[k] / norm : 0.0);
    result.embeddings.push_back(std::move(out));
  }
}

}  // namespace troupe
