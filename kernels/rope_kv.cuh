// Rotary embedding fused with the write of k and v into the paged cache (kernels/rope_kv.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace troupe::cuda {

struct RopeStoreArgs {
  __nv_bfloat16* qkv = nullptr;  // [num_tokens, (num_heads + 2 num_kv_heads) head_dim], rotated in place
  const int32_t* positions = nullptr;     // [num_tokens]
  const int32_t* slot_mapping = nullptr;  // [num_tokens]; a slot < 0 is not cached
  const float* cos = nullptr;             // [max_positions, head_dim / 2]
  const float* sin = nullptr;
  __nv_bfloat16* k_cache = nullptr;  // [num_slots, num_kv_heads, head_dim]
  __nv_bfloat16* v_cache = nullptr;
  int64_t num_tokens = 0;
  int64_t num_slots = 0;
  int max_positions = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  // Qwen3's per-head RMSNorm of q and k before the rotation, when set (qk_norm's semantics,
  // kernels/qk_norm.cuh): one pass over the heads instead of two kernels.
  const __nv_bfloat16* q_norm = nullptr;  // [head_dim]
  const __nv_bfloat16* k_norm = nullptr;
  float norm_eps = 0.0f;
};

// Rotates (rotate-half, "neox") every q and k head of each token by cos/sin of its position, in f32
// with each product and sum rounded as the CPU reference rounds them, then stores the rotated k and
// the v of tokens with a slot ≥ 0 into the cache. A position outside the table or a slot outside the
// cache leaves the token unrotated or uncached (a kernel cannot throw; the backend checks what it can
// on the host). head_dim must be even. With q_norm and k_norm set, each q and k head is first
// normalised and rounded to bf16 as qk_norm would store it.
void rope_store_kv(const RopeStoreArgs& args, cudaStream_t stream);

}  // namespace troupe::cuda
