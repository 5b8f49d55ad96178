// Per-head RMSNorm for Qwen3's q and k. A head is 16 to 256 values, too short for a block: one warp
// normalises one head, with 16-byte accesses when head_dim and the pointers allow. Each lane re-reads
// only what it loaded itself, so the in-place update needs no barrier.
#include <stdexcept>

#include "kernels/common.cuh"
#include "kernels/qk_norm.cuh"

namespace troupe::cuda {
namespace {

constexpr int threads = 256;
constexpr int warps_per_block = threads / warp_size;

template <int kVec>
__device__ __forceinline__ void load(const bf16* p, float (&v)[kVec]) {
  if constexpr (kVec == 8) {
    load8(p).to_floats(v);
  } else {
    v[0] = __bfloat162float(*p);
  }
}

template <int kVec>
__device__ __forceinline__ void store(bf16* p, const float (&v)[kVec]) {
  if constexpr (kVec == 8) {
    store8(p, Bf16x8::of_floats(v));
  } else {
    *p = __float2bfloat16_rn(v[0]);
  }
}

template <int kVec>
__global__ void __launch_bounds__(threads)
    qk_norm_kernel(bf16* qkv, int64_t heads_total, int num_heads, int num_kv_heads, int head_dim,
                   const bf16* __restrict__ q_weight, const bf16* __restrict__ k_weight, float eps) {
  const int64_t head = static_cast<int64_t>(blockIdx.x) * warps_per_block + threadIdx.x / warp_size;
  if (head >= heads_total) return;  // whole warps leave together
  const int lane = threadIdx.x % warp_size;
  const int normed = num_heads + num_kv_heads;  // q and k heads: the first `normed` heads of a row
  const int64_t token = head / normed;
  const int h = static_cast<int>(head - token * normed);
  bf16* const x = qkv + (token * (normed + num_kv_heads) + h) * head_dim;
  const bf16* const w = h < num_heads ? q_weight : k_weight;

  float sum_sq = 0.0f;
  for (int i = lane * kVec; i < head_dim; i += warp_size * kVec) {
    float v[kVec];
    load<kVec>(x + i, v);
#pragma unroll
    for (int j = 0; j < kVec; ++j) sum_sq += v[j] * v[j];
  }
  const float inv_rms = rsqrtf(warp_sum(sum_sq) / static_cast<float>(head_dim) + eps);
  for (int i = lane * kVec; i < head_dim; i += warp_size * kVec) {
    float v[kVec], g[kVec];
    load<kVec>(x + i, v);
    load<kVec>(w + i, g);
#pragma unroll
    for (int j = 0; j < kVec; ++j) v[j] = g[j] * (v[j] * inv_rms);
    store<kVec>(x + i, v);
  }
}

}  // namespace

void qk_norm(bf16* qkv, int64_t num_tokens, int num_heads, int num_kv_heads, int head_dim, const bf16* q_weight,
             const bf16* k_weight, float eps, cudaStream_t stream) {
  const int64_t heads = num_tokens * (num_heads + num_kv_heads);
  if (heads == 0 || head_dim == 0) return;
  const int64_t blocks = ceil_div(heads, warps_per_block);
  if (blocks > 0x7fffffff) throw std::invalid_argument("qk_norm: too many heads");
  const bool vectorised =
      head_dim % 8 == 0 && is_aligned(qkv, 16) && is_aligned(q_weight, 16) && is_aligned(k_weight, 16);
  const dim3 grid(static_cast<unsigned>(blocks));
  if (vectorised) {
    qk_norm_kernel<8><<<grid, threads, 0, stream>>>(qkv, heads, num_heads, num_kv_heads, head_dim, q_weight, k_weight,
                                                    eps);
    TROUPE_CUDA_CHECK_LAUNCH(qk_norm_kernel<8>);
  } else {
    qk_norm_kernel<1><<<grid, threads, 0, stream>>>(qkv, heads, num_heads, num_kv_heads, head_dim, q_weight, k_weight,
                                                    eps);
    TROUPE_CUDA_CHECK_LAUNCH(qk_norm_kernel<1>);
  }
}

}  // namespace troupe::cuda
