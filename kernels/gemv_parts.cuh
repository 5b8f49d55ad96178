// Device code that kernels/gemv.cu's register-streaming GEMV and kernels/stream_gemv.cu's
// shared-memory-streaming one share: the 16-byte vectors and their sums, the fused inputs (RMSNorm,
// SwiGLU) computed as the unfused kernels compute them, and the kernels' parameters. Both sum a row
// in the same order (lane l takes vectors l, l + 32, … in turn; then a butterfly), so either gives
// the same bits. Included by those two .cu files only.
#pragma once

#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/gemv.cuh"

namespace troupe::cuda::gemv {

constexpr int kVec = 8;          // bf16 per 16-byte load
constexpr int kRmsMaxThreads = 512;  // kernels/rmsnorm.cu's largest block

struct alignas(16) Vec8 {
  __nv_bfloat162 h[4];
};

__device__ __forceinline__ Vec8 load_vec(const bf16* p) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));  // read-only path
  return *reinterpret_cast<const Vec8*>(&raw);
}

__device__ __forceinline__ void accumulate(const Vec8& w, const Vec8& x, float& acc) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 wf = __bfloat1622float2(w.h[i]);
    const float2 xf = __bfloat1622float2(x.h[i]);
    acc = fmaf(wf.x, xf.x, acc);
    acc = fmaf(wf.y, xf.y, acc);
  }
}

// SwiGLU's silu(gate) · up of a gate_up row [gate | up] (width 2k), rounded to bf16 as
// kernels/activation.cu's silu_mul rounds it, so that the fused layer computes what silu_mul and
// then the linear layer would.
__device__ __forceinline__ Vec8 silu_mul8(const Vec8& g, const Vec8& u) {
  Vec8 r;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 gf = __bfloat1622float2(g.h[i]), uf = __bfloat1622float2(u.h[i]);
    r.h[i] = __floats2bfloat162_rn(gf.x / (1.0f + expf(-gf.x)) * uf.x, gf.y / (1.0f + expf(-gf.y)) * uf.y);
  }
  return r;
}

// Where the output goes: stored, added to what out holds (the residual stream), or stored and
// pushed to the peers' mailboxes of a pushed all-reduce.
enum class Out { store, add, push };

struct Params {
  const bf16* x;
  const bf16* w;
  const bf16* bias;
  bf16* out;  // may be read too (add_to_out): no __restrict__
  const bf16* norm_weight;
  float eps;
  int64_t n, k;
  int rms_threads;  // rms_norm input: the threads kernels/rmsnorm.cu would give a row of k
  PushedAllReduce ar;  // Out::push: where the outputs go too
  bool prefetch_norm;  // rms_norm input: prefetch_norm_weight (TROUPE_NORM_PREFETCH=0: not, to measure)
};

// rms_norm input: 1 / rms of each token's row, with the very sums kernels/rmsnorm.cu makes (its
// thread i takes vectors i, i + rms_threads, …; a butterfly within each warp; warp 0 adds the warps'
// sums in order), so the normalised values are bit for bit those of the rms_norm kernel. This block
// may have fewer threads (BLOCK) than that kernel: thread t then plays its threads t and t + BLOCK.
template <int TOKENS, int BLOCK>
__device__ void rms_scales(const Params& p, float (&inv_rms)[TOKENS]) {
  static_assert(kRmsMaxThreads % BLOCK == 0);
  __shared__ float partial[TOKENS][kRmsMaxThreads / 32];
  const int64_t vecs = p.k / kVec;
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int t = 0; t < TOKENS; ++t) {
#pragma unroll
    for (int half = 0; half < kRmsMaxThreads / BLOCK; ++half) {
      const int vt = threadIdx.x + half * BLOCK;
      if (half * BLOCK >= p.rms_threads) break;  // the same for the whole block
      float sum_sq = 0.0f;
      if (vt < p.rms_threads) {
        for (int64_t v = vt; v < vecs; v += p.rms_threads) {
          const Vec8 x = load_vec(p.x + t * p.k + v * kVec);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float2 f = __bfloat1622float2(x.h[i]);
            sum_sq += f.x * f.x;
            sum_sq += f.y * f.y;
          }
        }
      }
      sum_sq = warp_sum(sum_sq);
      if (lane == 0 && vt < p.rms_threads) partial[t][vt >> 5] = sum_sq;
    }
  }
  __syncthreads();
  const int warps = p.rms_threads / 32;
#pragma unroll
  for (int t = 0; t < TOKENS; ++t) {
    float v = lane < warps ? partial[t][lane] : 0.0f;
    v = warp_sum(v);
    inv_rms[t] = rsqrtf(v / static_cast<float>(p.k) + p.eps);
  }
}

// rms_norm input: the norm's weight asked of L2 before the wait for the previous kernel (it does not
// depend on it), so that staging the input after the wait finds it there instead of in memory
// (llama-3.1-8b's batch-1 step on 4 × H200: tp1 4.416 -> 4.400 ms, tp2 2.747 -> 2.732).
template <GemvInput IN, int BLOCK>
__device__ __forceinline__ void prefetch_norm_weight(const Params& p) {
  if constexpr (IN == GemvInput::rms_norm) {
    if (!p.prefetch_norm) return;
    for (int64_t i = threadIdx.x; i < p.k / 64; i += BLOCK)  // 128-byte lines
      asm volatile("prefetch.global.L2 [%0];" ::"l"(p.norm_weight + i * 64));
  }
}

// The computed input (rms_norm, silu_mul) of TOKENS rows, or the plain one copied, into shared
// memory (`staged`, [TOKENS][k / 8]) by the block's BLOCK threads, then a barrier.
template <int TOKENS, GemvInput IN, int BLOCK>
__device__ void stage_input(const Params& p, Vec8* staged) {
  const int64_t vecs = p.k / kVec;
  if constexpr (IN == GemvInput::rms_norm) {
    float inv_rms[TOKENS];
    rms_scales<TOKENS, BLOCK>(p, inv_rms);
#pragma unroll 2
    for (int64_t i = threadIdx.x; i < TOKENS * vecs; i += BLOCK) {
      const int t = static_cast<int>(i / vecs);
      const Vec8 x = load_vec(p.x + i * kVec), g = load_vec(p.norm_weight + (i % vecs) * kVec);
      Vec8 r;
      float scale = inv_rms[0];
#pragma unroll
      for (int u = 1; u < TOKENS; ++u)
        if (t == u) scale = inv_rms[u];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 xf = __bfloat1622float2(x.h[j]), gf = __bfloat1622float2(g.h[j]);
        r.h[j] = __floats2bfloat162_rn(gf.x * (xf.x * scale), gf.y * (xf.y * scale));
      }
      staged[i] = r;
    }
  } else if constexpr (IN == GemvInput::silu_mul) {
#pragma unroll 2
    for (int64_t i = threadIdx.x; i < TOKENS * vecs; i += BLOCK) {
      const int64_t t = i / vecs, v = i % vecs;
      const bf16* row = p.x + t * 2 * p.k;
      staged[i] = silu_mul8(load_vec(row + v * kVec), load_vec(row + (vecs + v) * kVec));
    }
  } else {
    for (int64_t i = threadIdx.x; i < TOKENS * vecs; i += BLOCK) staged[i] = load_vec(p.x + i * kVec);
  }
  __syncthreads();
}

// kernels/stream_gemv.cu's kernel for one token, where stream_gemv_takes the projection.
void launch_stream_gemv(const Params& p, GemvInput in, Out out, cudaStream_t stream);

}  // namespace troupe::cuda::gemv
