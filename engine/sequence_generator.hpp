// Generation for one sequence at a time, without a scheduler: prefill the prompt, then decode token
// by token through the sampler. The reference path that tests compare the actor runtime with.
#pragma once

#include <functional>
#include <span>
#include <vector>

#include "engine/model.hpp"
#include "engine/sampler.hpp"

namespace troupe {

struct Generation {
  std::vector<int32_t> tokens;
  FinishReason finish = FinishReason::none;
};

// Called with each new token as it is sampled; returning false stops generation.
using TokenCallback = std::function<bool(int32_t token)>;

class SequenceGenerator {
 public:
  explicit SequenceGenerator(Model& model, int block_size = 16) : model_(model), block_size_(block_size) {}

  // Generates until a stop token, max_tokens, or the model's last position. `eos_token_ids` stop the
  // sequence unless params.ignore_eos.
  Generation generate(std::span<const int32_t> prompt, const SamplingParams& params,
                      std::span<const int32_t> eos_token_ids = {}, const TokenCallback& on_token = {});

 private:
  Model& model_;
  int block_size_;
};

}  // namespace troupe
