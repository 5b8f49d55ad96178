// The model runner's sampler on a CUDA backend: logits stay on the device, ids come back.
#pragma once

#include <memory>

#include "engine/logits_sampler.hpp"

namespace troupe {

// penalty_slots: sequences with penalties tracked at once on the device (600 KB each at a 152k
// vocabulary); a sequence beyond that is refused with an error naming the limit.
std::unique_ptr<LogitsSampler> make_gpu_logits_sampler(Backend& backend, int vocab, int penalty_slots);

}  // namespace troupe
