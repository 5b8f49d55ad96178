// Per-head RMSNorm of q and k inside fused qkv rows (Qwen3), launcher in kernels/qk_norm.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace troupe::cuda {

// For each of num_tokens rows of (num_heads + 2 num_kv_heads) heads of head_dim: every q head
// x ← x / sqrt(mean(x²) + eps) · q_weight and every k head likewise with k_weight, in place, f32 math;
// v heads are left alone.
void qk_norm(__nv_bfloat16* qkv, int64_t num_tokens, int num_heads, int num_kv_heads, int head_dim,
             const __nv_bfloat16* q_weight, const __nv_bfloat16* k_weight, float eps, cudaStream_t stream);

}  // namespace troupe::cuda
