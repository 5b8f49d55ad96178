// Runs a Model directly from tests, without the runtime.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/model.hpp"

namespace troupe::test {

// Logits of every position of `tokens` when the sequence runs alone in a fresh cache of `block`-token
// blocks: [tokens × vocab], row-major, as f32.
std::vector<float> logits_alone(Model& model, const std::vector<int32_t>& tokens, int block = 16);

}  // namespace troupe::test
