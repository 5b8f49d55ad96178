// Entry points of the CUDA backend that the worker (and tests) use; the rest stays inside kernels/.
#pragma once

#include <memory>

#include "engine/backend.hpp"

namespace troupe {

// GPUs usable by this process; 0 when there is no driver or no device (never throws).
int cuda_device_count();

// A backend bound to one device: bf16 weights and activations, f32 accumulation.
std::unique_ptr<Backend> make_cuda_backend(int device);

}  // namespace troupe
