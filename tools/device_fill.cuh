// Random bf16 in [-1, 1) from a hash of the index, for the standalone kernel benchmarks (never
// zeros, which some kernels would read faster). Each benchmark is one translation unit, so one definition.
#pragma once

#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

__global__ void fill_random(__nv_bfloat16* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = __float2bfloat16(static_cast<float>(h & 0xffff) / 32768.0f - 1.0f);
  }
}
