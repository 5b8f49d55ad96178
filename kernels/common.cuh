// Device helpers that every kernel file shares: reductions, 16-byte bf16 packs, launch arithmetic.
// Included by .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda_check.hpp"

namespace troupe::cuda {

using bf16 = __nv_bfloat16;

constexpr int warp_size = 32;

// Eight bf16 in one 16-byte load or store (LDG.128 / STG.128): the widest access a thread can make,
// which is what memory-bound kernels need to come near HBM bandwidth. Held as a uint4 because a copy
// of a struct of __nv_bfloat162 is split into 4-byte accesses; get/set take constant indices (unrolled
// loops) so that it stays in registers.
struct alignas(16) Bf16x8 {
  uint4 raw;

  __device__ __forceinline__ float2 get(int j) const {
    return __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(&raw)[j]);
  }
  __device__ __forceinline__ void set(int j, float a, float b) {
    reinterpret_cast<__nv_bfloat162*>(&raw)[j] = __floats2bfloat162_rn(a, b);
  }
};

__device__ __forceinline__ Bf16x8 load8(const __nv_bfloat16* p) { return {*reinterpret_cast<const uint4*>(p)}; }
__device__ __forceinline__ void store8(__nv_bfloat16* p, const Bf16x8& v) { *reinterpret_cast<uint4*>(p) = v.raw; }

inline bool is_aligned(const void* p, std::size_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Threads for a block that walks `items` per row: a whole number of warps, no more than `max_threads`.
inline int block_threads(int64_t items, int max_threads) {
  int64_t warps = ceil_div(items, warp_size);
  if (warps < 1) warps = 1;
  if (warps * warp_size > max_threads) return max_threads;
  return static_cast<int>(warps * warp_size);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = warp_size / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block, returned to every thread. blockDim.x must be a multiple of 32; call it from
// every thread of the block, at most once per kernel (it owns its shared memory).
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_partial[32];
  __shared__ float total;
  const int lane = threadIdx.x % warp_size;
  const int warp = threadIdx.x / warp_size;
  v = warp_sum(v);
  if (lane == 0) warp_partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x / warp_size;
    v = lane < warps ? warp_partial[lane] : 0.0f;
    v = warp_sum(v);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

}  // namespace troupe::cuda
