// The arithmetic of rotary embeddings (rotate-half, "neox") on q and k, and of Qwen3's per-head
// RMSNorm before them, for the two kernels that apply them: rope_store_kv_kernel (rope_kv.cu) and the
// decode attention kernel that rotates its own heads (paged_decode.cu with decode_rope.cuh). The two
// must give the same bits, so every product and sum is rounded by an explicit intrinsic: nothing is
// left to the compiler's FMA contraction, which could differ between the two kernels' contexts.
// Included by .cu files only.
#pragma once

#include "kernels/common.cuh"

namespace troupe::cuda::rope_math {

// Eight f32 from 32 bytes (a rope table's row).
__device__ __forceinline__ void load(const float* p, float (&v)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

// (x1, x2) ← (x1 c − x2 s, x2 c + x1 s) for N pairs (x_i, x_{i + head_dim / 2}), each product and sum
// rounded separately, as the f32 CPU reference computes them, so that both round to the same bf16.
template <int N>
__device__ __forceinline__ void rotate(float (&x1)[N], float (&x2)[N], const float (&c)[N], const float (&s)[N]) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const float y1 = __fsub_rn(__fmul_rn(x1[j], c[j]), __fmul_rn(x2[j], s[j]));
    const float y2 = __fadd_rn(__fmul_rn(x2[j], c[j]), __fmul_rn(x1[j], s[j]));
    x1[j] = y1;
    x2[j] = y2;
  }
}

// 1 / rms of a head of head_dim values whose `groups` threads (consecutive lanes from a multiple of
// groups, a power of two up to 32) hold N pairs each. Every lane of the warp calls it (the shuffles
// take the whole warp); a lane with no head passes zeros. The fused multiply-add of each pair's
// squares is what rope_kv.cu's norm compiled to when the compiler chose, kept so that its results did
// not change when this function took its place.
template <int N>
__device__ __forceinline__ float head_inverse_rms(const float (&x1)[N], const float (&x2)[N], int groups, int head_dim,
                                                  float eps) {
  float sum_sq = 0.0f;
#pragma unroll
  for (int j = 0; j < N; ++j) sum_sq = __fadd_rn(sum_sq, __fmaf_rn(x1[j], x1[j], __fmul_rn(x2[j], x2[j])));
  for (int offset = groups / 2; offset > 0; offset /= 2)
    sum_sq = __fadd_rn(sum_sq, __shfl_xor_sync(0xffffffffu, sum_sq, offset));
  return rsqrtf(__fadd_rn(__fdiv_rn(sum_sq, static_cast<float>(head_dim)), eps));
}

// x ← bf16(g · (x · inv_rms)), kept as f32: a normalised value as qk_norm would store it, which the
// rotation then takes.
template <int N>
__device__ __forceinline__ void normalise(float (&x)[N], const float (&g)[N], float inv_rms) {
#pragma unroll
  for (int j = 0; j < N; ++j) x[j] = __bfloat162float(__float2bfloat16_rn(__fmul_rn(g[j], __fmul_rn(x[j], inv_rms))));
}

}  // namespace troupe::cuda::rope_math
