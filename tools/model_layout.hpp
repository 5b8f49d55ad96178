// The tensors of a Hugging Face checkpoint for a ModelConfig: names exactly as on the hub, shapes, and
// how the model maker draws each one's random values so that they are scaled like a trained model's.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/model_config.hpp"

namespace troupe {

// Values are mean + std * N(0, 1).
struct WeightInit {
  float mean = 0.0f;
  float std = 1.0f;
};

struct WeightSpec {
  std::string name;
  std::vector<int64_t> shape;
  WeightInit init;

  uint64_t numel() const {
    uint64_t n = 1;
    for (int64_t s : shape) n *= static_cast<uint64_t>(s);
    return n;
  }
};

// Every tensor of `config`'s checkpoint, layer by layer in the order they are written (embeddings
// first, final norm and lm_head last). `depth` is the layer count that scales the residual-branch
// outputs (o_proj, down_proj): the full model's, so that a model cut to its first layers has exactly
// the full model's weights there.
std::vector<WeightSpec> checkpoint_layout(const ModelConfig& config, int depth);

uint64_t count_parameters(const ModelConfig& config);

}  // namespace troupe
