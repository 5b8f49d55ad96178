// Rotary embedding tables: the inverse frequencies of a model (with Llama 3 scaling) and the cos/sin
// of every position, computed in f32 the way transformers does so that logits agree to the last bits.
#pragma once

#include <vector>

#include "config/model_config.hpp"

namespace troupe {

// head_dim / 2 inverse frequencies.
std::vector<float> rope_inverse_frequencies(const ModelConfig& config);

// cos and sin of position × inverse frequency, [max_positions, head_dim / 2] row-major each.
struct RopeValues {
  std::vector<float> cos;
  std::vector<float> sin;
};
RopeValues rope_values(const ModelConfig& config, int max_positions);

}  // namespace troupe
