#include "engine/model_runner.hpp"

#include <cmath>
#include <stdexcept>

namespace troupe {

ModelRunner::ModelRunner(std::unique_ptr<Backend> backend, std::unique_ptr<Model> model,
                         std::unique_ptr<LogitsSampler> sampler)
    : backend_(std::move(backend)), model_(std::move(model)), sampler_(std::move(sampler)) {
  if (!sampler_) sampler_ = make_host_logits_sampler(*backend_, model_->config().vocab_size);
}

ModelRunner::~ModelRunner() = default;

int64_t ModelRunner::kv_bytes_per_block(int block_size) const {
  const LayerRange layers = model_->layers();
  return 2LL * (layers.end - layers.begin) * block_size * model_->local_kv_heads() * model_->config().head_dim *
         static_cast<int64_t>(dtype_size(backend_->compute_dtype()));
}

void ModelRunner::allocate_kv_cache(int num_blocks, int block_size, int max_batched_tokens, int max_seqs, bool eager) {
  cache_ = model_->allocate_kv_cache(num_blocks, block_size);
  const int blocks_per_seq = (model_->max_positions() + block_size - 1) / block_size;
  model_->reserve_inputs(std::max(max_batched_tokens, 256), std::max(max_seqs, 256), blocks_per_seq);
  if (backend_->device() == Device::cuda && !eager) {
    graphs_ = std::make_unique<DecodeGraphs>(*model_, model_->max_positions());
    graphs_->capture(cache_, block_size);
  }
}

StepResult ModelRunner::run(const StepPlan& plan, const ForwardHooks& hooks) {
  StepResult result;
  result.micro_batch = plan.micro_batch;
  if (samples()) {
    for (SeqId id : plan.released) {
      samplers_.erase(id);
      sampler_->release(id);
    }
    for (const NewSequence& s : plan.new_seqs) samplers_.try_emplace(s.id, s.params, s.prompt, s.eos_token_ids);
  }
  Tensor hidden;
  std::optional<Tensor> graphed;
  // Every rank of a group takes the same path (their collectives must pair up), so the per-rank
  // hooks do not decide it: a replayed step reports no routing, and expert statistics count the
  // tokens of eager steps. Spans (read on the host mid-step) come only from the MoE exchange across
  // data-parallel ranks, which is never captured, so tracing keeps the graphs.
  if (graphs_ && !hooks.eager) graphed = graphs_->forward(plan.batch, cache_);
  Tensor logits = graphed ? *graphed : model_->forward(plan.batch, cache_, hooks, &hidden);
  if (!samples()) return result;
  if (!plan.batch.embed_indices.empty()) pool(plan, hidden, result);
  if (plan.batch.logits_indices.empty()) return result;

  row_seqs_.clear();
  row_samplers_.clear();
  bool any_logprobs = false;
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    if (!plan.samples[i]) continue;
    auto it = samplers_.find(plan.seqs[i]);
    if (it == samplers_.end()) throw std::logic_error("no sampler for sequence " + std::to_string(plan.seqs[i]));
    row_seqs_.push_back(plan.seqs[i]);
    row_samplers_.push_back(&it->second);
    any_logprobs = any_logprobs || it->second.params().logprobs.has_value();
  }
  row_tokens_.resize(row_seqs_.size());
  row_results_.resize(any_logprobs ? row_seqs_.size() : 0);
  sampler_->sample(logits, row_seqs_, row_samplers_, row_tokens_, row_results_);
  for (size_t r = 0; r < row_seqs_.size(); ++r) {
    SequenceSampler& sampler = *row_samplers_[r];
    SampledToken out{row_seqs_[r], row_tokens_[r], sampler.accept(row_tokens_[r]), 0.0f, {}};
    if (sampler.params().logprobs) {
      out.logprob = row_results_[r].logprob;
      out.top = row_results_[r].top;
    }
    result.tokens.push_back(std::move(out));
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
