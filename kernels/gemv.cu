#include "kernels/gemv.cuh"

#include <cstdint>

namespace troupe::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kWarps = 8;        // per block
constexpr int kVec = 8;          // bf16 per 16-byte load

struct alignas(16) Vec8 {
  __nv_bfloat162 h[4];
};

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

// 16-byte loads in flight per lane: enough at one row and one token to cover the memory latency
// with few warps per SM (the o and down projections of a small model have ~1000 rows), fewer where
// rows and tokens multiply the registers each step holds.
template <int TOKENS, int ROWS>
constexpr int kUnroll = ROWS * TOKENS >= 8 ? 1 : 8 / (ROWS * TOKENS);

// One warp per ROWS consecutive rows of w (four for a wide layer at one or two tokens, else one);
// lanes stride along k by 16-byte vectors, each keeping TOKENS × ROWS partial sums, then a butterfly
// sums the lanes. x is small (at most 8 rows) and read by every warp, from L1/L2. GATED: x is
// gate_up [TOKENS, 2k]; the block first computes its activation rows into shared memory (once per
// block rather than once per warp: the exponentials would otherwise cost as much as the loads).
template <int TOKENS, int ROWS, bool GATED>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                                           const bf16* __restrict__ bias, bf16* __restrict__ out,
                                                           int64_t n, int64_t k) {
  extern __shared__ Vec8 staged[];  // GATED: [TOKENS][k / 8]
  const int64_t vecs = k / kVec;
  if constexpr (GATED) {
    for (int64_t i = threadIdx.x; i < TOKENS * vecs; i += blockDim.x) {
      const int64_t t = i / vecs, v = i % vecs;
      const Vec8* row = reinterpret_cast<const Vec8*>(x + t * 2 * k);
      staged[i] = silu_mul8(row[v], row[vecs + v]);
    }
    __syncthreads();
  }
  const int lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t row0 = warp * ROWS;
  if (row0 >= n) return;
  float acc[ROWS][TOKENS];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int t = 0; t < TOKENS; ++t) acc[r][t] = 0.0f;

#pragma unroll kUnroll<TOKENS, ROWS>
  for (int64_t v = lane; v < vecs; v += 32) {
    Vec8 xv[TOKENS];
#pragma unroll
    for (int t = 0; t < TOKENS; ++t)
      xv[t] = GATED ? staged[t * vecs + v] : reinterpret_cast<const Vec8*>(x + t * k)[v];
    Vec8 wv[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const int64_t row = row0 + r < n ? row0 + r : n - 1;  // past the end: read a real row, drop it below
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(w + row * k) + v);  // read-only path
      wv[r] = *reinterpret_cast<const Vec8*>(&raw);
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
      for (int t = 0; t < TOKENS; ++t) accumulate(wv[r], xv[t], acc[r][t]);
  }

#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int t = 0; t < TOKENS; ++t)
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) acc[r][t] += __shfl_xor_sync(0xffffffffu, acc[r][t], offset);

  if (lane < ROWS * TOKENS) {
    // Lane (r, t) writes one output; the compile-time indices keep acc in registers.
    float value = 0.0f;
    int r_of_lane = 0, t_of_lane = 0;
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
      for (int t = 0; t < TOKENS; ++t)
        if (lane == r * TOKENS + t) {
          value = acc[r][t];
          r_of_lane = r;
          t_of_lane = t;
        }
    const int64_t row = row0 + r_of_lane;
    if (row < n) {
      if (bias) value += __bfloat162float(bias[row]);
      out[t_of_lane * n + row] = __float2bfloat16(value);
    }
  }
}

template <int TOKENS, int ROWS, bool GATED>
void launch_rows(const bf16* x, const bf16* w, const bf16* bias, bf16* out, int64_t n, int64_t k, cudaStream_t stream) {
  const int64_t warps = (n + ROWS - 1) / ROWS;
  const auto blocks = static_cast<unsigned>((warps + kWarps - 1) / kWarps);
  const size_t smem = GATED ? static_cast<size_t>(TOKENS * k) * sizeof(bf16) : 0;
  gemv_kernel<TOKENS, ROWS, GATED><<<blocks, kWarps * 32, smem, stream>>>(x, w, bias, out, n, k);
}

// Four rows per warp where that still gives every SM (132 on an H100 SXM) two blocks, and only at
// one or two tokens: beyond, four rows' sums for every token would spill registers.
constexpr int64_t kBlocksWanted = 264;
constexpr int64_t kMaxStagedBytes = 48 * 1024;

template <int TOKENS, bool GATED>
void launch(const bf16* x, const bf16* w, const bf16* bias, bf16* out, int64_t n, int64_t k, cudaStream_t stream) {
  if (TOKENS <= 2 && n >= kBlocksWanted * kWarps * 4)
    launch_rows<TOKENS, 4, GATED>(x, w, bias, out, n, k, stream);
  else
    launch_rows<TOKENS, 1, GATED>(x, w, bias, out, n, k, stream);
}

template <bool GATED>
bool dispatch(const bf16* x, const bf16* w, const bf16* bias, bf16* out, int64_t tokens, int64_t n, int64_t k,
              cudaStream_t stream) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (tokens < 1 || tokens > kGemvMaxTokens || n < 1 || k < kVec || k % kVec != 0 || !aligned(x) || !aligned(w))
    return false;
  // The staged activations must fit the shared memory a block gets without opting in.
  if (GATED && tokens * k * static_cast<int64_t>(sizeof(bf16)) > kMaxStagedBytes) return false;
  static_assert(4 * kGemvMaxTokens <= 32, "one lane writes each of a warp's outputs");
  switch (tokens) {
    case 1: launch<1, GATED>(x, w, bias, out, n, k, stream); break;
    case 2: launch<2, GATED>(x, w, bias, out, n, k, stream); break;
    case 3: launch<3, GATED>(x, w, bias, out, n, k, stream); break;
    case 4: launch<4, GATED>(x, w, bias, out, n, k, stream); break;
    case 5: launch<5, GATED>(x, w, bias, out, n, k, stream); break;
    case 6: launch<6, GATED>(x, w, bias, out, n, k, stream); break;
    case 7: launch<7, GATED>(x, w, bias, out, n, k, stream); break;
    case 8: launch<8, GATED>(x, w, bias, out, n, k, stream); break;
  }
  return true;
}

}  // namespace

bool small_batch_linear(const bf16* x, const bf16* w, const bf16* bias, bf16* out, int64_t tokens, int64_t n, int64_t k,
                        cudaStream_t stream) {
  return dispatch<false>(x, w, bias, out, tokens, n, k, stream);
}

bool small_batch_silu_mul_linear(const bf16* gate_up, const bf16* w, bf16* out, int64_t tokens, int64_t n, int64_t k,
                                 cudaStream_t stream) {
  return dispatch<true>(gate_up, w, nullptr, out, tokens, n, k, stream);
}

}  // namespace troupe::cuda
