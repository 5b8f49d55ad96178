// Deterministic pseudo-random fill for dummy weights, generated where they live.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/backend.hpp"
#include "engine/dtype.hpp"

namespace troupe::cuda {

// n elements of `dtype` (f32, f16 or bf16) at `out`: mean + std * (an approximately normal value
// from counter window.index(i) and `seed`), the recipe of the CPU backend's fill_random.
void launch_random_fill(void* out, DType dtype, int64_t n, uint64_t seed, float mean, float std, RandomWindow window,
                        cudaStream_t stream);

}  // namespace troupe::cuda
