#include "engine/sequence_generator.hpp"

#include <numeric>
#include <stdexcept>
#include <string>

namespace troupe {

Generation SequenceGenerator::generate(std::span<const int32_t> prompt, const SamplingParams& params,
                                       std::span<const int32_t> eos_token_ids, const TokenCallback& on_token) {
  params.validate();
  const int limit = model_.max_positions();
  const int prompt_len = static_cast<int>(prompt.size());
  if (prompt_len == 0) throw std::invalid_argument("the prompt is empty");
  if (prompt_len >= limit)
    throw std::invalid_argument("the prompt has " + std::to_string(prompt_len) + " tokens; the model serves " +
                                std::to_string(limit) + " positions");
  const int max_new = params.max_tokens ? std::min(*params.max_tokens, limit - prompt_len) : limit - prompt_len;
  const int capacity = prompt_len + max_new;
  const int blocks = (capacity + block_size_ - 1) / block_size_;
  KvCache cache = model_.allocate_kv_cache(blocks, block_size_);
  std::vector<int32_t> table(blocks);
  std::iota(table.begin(), table.end(), 0);

  SequenceSampler sampler(params, prompt, eos_token_ids);
  Backend& backend = model_.backend();
  const int vocab = model_.config().vocab_size;
  std::vector<float> logits(vocab);
  Generation out;

  StepBatch batch;
  batch.block_size = block_size_;
  batch.add_sequence(prompt, 0, table);
  int length = prompt_len;
  while (true) {
    backend.download(model_.forward(batch, cache), logits.data());
    const int32_t token = sampler.sample(logits);
    out.tokens.push_back(token);
    out.finish = sampler.accept(token);
    ++length;
    if (on_token && !on_token(token)) break;
    if (out.finish != FinishReason::none) break;
    if (length >= capacity) {
      out.finish = FinishReason::length;
      break;
    }
    batch = StepBatch{};
    batch.block_size = block_size_;
    const int32_t next[] = {token};
    batch.add_sequence(next, length - 1, table);
  }
  return out;
}

}  // namespace troupe
