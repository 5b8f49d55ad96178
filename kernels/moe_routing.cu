// Softmax + top-k over router logits: one warp per token. E is small (8 to a few hundred), so a row
// lives in shared memory and the k selections are k warp-wide argmax reductions over it.
//
// The arithmetic follows the CPU reference step for step (max, exp(l − max) in f32 rounded from a
// double exp, a sequential f32 sum in expert order, one division), because routing is discrete: a
// probability one ulp off can swap two experts, and the tests compare ids exactly.
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/common.cuh"
#include "kernels/moe_routing.cuh"

namespace troupe::cuda {
namespace {

constexpr int warps_per_block = 4;

__device__ __forceinline__ float to_float(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(float v) { return v; }

template <class LogitT>
__global__ void __launch_bounds__(warps_per_block * warp_size)
    moe_route_kernel(const LogitT* __restrict__ logits, int64_t tokens, int experts, int top_k, bool renormalize,
                     float* __restrict__ weights, int32_t* __restrict__ ids) {
  extern __shared__ float probs_all[];
  const int warp = threadIdx.x / warp_size, lane = threadIdx.x % warp_size;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * warps_per_block + warp;
  if (t >= tokens) return;  // whole warps leave; nothing below synchronises the block
  float* p = probs_all + warp * experts;
  const LogitT* row = logits + t * experts;

  float mx = -INFINITY;
  for (int i = lane; i < experts; i += warp_size) {
    const float v = to_float(row[i]);
    p[i] = v;
    mx = fmaxf(mx, v);
  }
#pragma unroll
  for (int offset = warp_size / 2; offset > 0; offset /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, offset));
  for (int i = lane; i < experts; i += warp_size) p[i] = static_cast<float>(exp(static_cast<double>(p[i] - mx)));
  __syncwarp();
  float sum = 0.0f;
  if (lane == 0)
    for (int i = 0; i < experts; ++i) sum += p[i];
  sum = __shfl_sync(0xffffffffu, sum, 0);
  for (int i = lane; i < experts; i += warp_size) p[i] = p[i] / sum;
  __syncwarp();

  float* w_out = weights + t * top_k;
  int32_t* id_out = ids + t * top_k;
  for (int j = 0; j < top_k; ++j) {
    // Probabilities are ≥ 0, so −1 marks a chosen expert and never wins again.
    float best = -2.0f;
    int best_id = experts;
    for (int i = lane; i < experts; i += warp_size) {
      if (p[i] > best) {  // strict: a lane's first maximum, i.e. its lowest id
        best = p[i];
        best_id = i;
      }
    }
#pragma unroll
    for (int offset = warp_size / 2; offset > 0; offset /= 2) {
      const float other = __shfl_xor_sync(0xffffffffu, best, offset);
      const int other_id = __shfl_xor_sync(0xffffffffu, best_id, offset);
      if (other > best || (other == best && other_id < best_id)) {
        best = other;
        best_id = other_id;
      }
    }
    if (lane == 0) {
      w_out[j] = best;
      id_out[j] = best_id;
      if (best_id < experts) p[best_id] = -1.0f;  // none found only for NaN logits
    }
    __syncwarp();
  }
  if (renormalize && lane == 0) {
    // Lane 0 wrote these itself, so it reads them back without a fence.
    float chosen = 0.0f;
    for (int j = 0; j < top_k; ++j) chosen += w_out[j];
    for (int j = 0; j < top_k; ++j) w_out[j] = w_out[j] / chosen;
  }
}

template <class LogitT>
void launch(const LogitT* logits, int64_t tokens, int experts, int top_k, bool renormalize, float* weights,
            int32_t* ids, cudaStream_t stream) {
  if (tokens == 0) return;
  if (experts < 1 || top_k < 1 || top_k > experts)
    throw std::invalid_argument("moe_route: top_k " + std::to_string(top_k) + " of " + std::to_string(experts) +
                                " experts");
  const std::size_t smem = static_cast<std::size_t>(warps_per_block) * experts * sizeof(float);
  if (smem > 48 * 1024) throw std::invalid_argument("moe_route: more than 3072 experts");
  const int64_t blocks = ceil_div(tokens, warps_per_block);
  if (blocks > std::numeric_limits<int32_t>::max()) throw std::invalid_argument("moe_route: too many tokens");
  moe_route_kernel<LogitT><<<static_cast<unsigned>(blocks), warps_per_block * warp_size, smem, stream>>>(
      logits, tokens, experts, top_k, renormalize, weights, ids);
  TROUPE_CUDA_CHECK_LAUNCH(moe_route_kernel);
}

}  // namespace

void moe_route(const bf16* logits, int64_t tokens, int experts, int top_k, bool renormalize, float* weights,
               int32_t* ids, cudaStream_t stream) {
  launch(logits, tokens, experts, top_k, renormalize, weights, ids, stream);
}

void moe_route(const float* logits, int64_t tokens, int experts, int top_k, bool renormalize, float* weights,
               int32_t* ids, cudaStream_t stream) {
  launch(logits, tokens, experts, top_k, renormalize, weights, ids, stream);
}

}  // namespace troupe::cuda
