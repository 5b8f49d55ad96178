// RoPE on q and k, fused with the cache write of k and v: one pass over the qkv row instead of a
// rotate pass and a copy pass. One block per token; a thread takes 8 pairs (x_i, x_{i+half}) of one
// head, so every access is 16 bytes (32 for the f32 cos/sin) when head_dim is a multiple of 16.
// Llama 3 frequency scaling lives in the table (engine/rope.cpp), so the kernel only reads cos/sin.
#include <stdexcept>

#include "kernels/common.cuh"
#include "kernels/qk_norm.cuh"
#include "kernels/rope_kv.cuh"
#include "kernels/rope_math.cuh"

namespace troupe::cuda {
namespace {

// One round over a small model's heads (qwen3-0.6b: 24 heads × 8 vectors): a decode step's token is
// one block, whose time is its chain of dependent loads.
constexpr int threads = 256;

template <int kVec>
struct Lane;

template <>
struct Lane<8> {
  static __device__ __forceinline__ void load(const bf16* p, float (&v)[8]) { load8(p).to_floats(v); }
  static __device__ __forceinline__ void load(const float* p, float (&v)[8]) { rope_math::load(p, v); }
  static __device__ __forceinline__ Bf16x8 pack(const float (&v)[8]) { return Bf16x8::of_floats(v); }
  static __device__ __forceinline__ void store(bf16* p, const Bf16x8& v) { store8(p, v); }
  static __device__ __forceinline__ void copy(const bf16* src, bf16* dst) { store8(dst, load8(src)); }
  static __device__ __forceinline__ Bf16x8 raw(const bf16* p) { return load8(p); }
};

template <>
struct Lane<1> {
  static __device__ __forceinline__ void load(const bf16* p, float (&v)[1]) { v[0] = __bfloat162float(*p); }
  static __device__ __forceinline__ void load(const float* p, float (&v)[1]) { v[0] = *p; }
  static __device__ __forceinline__ bf16 pack(const float (&v)[1]) { return __float2bfloat16_rn(v[0]); }
  static __device__ __forceinline__ void store(bf16* p, bf16 v) { *p = v; }
  static __device__ __forceinline__ void copy(const bf16* src, bf16* dst) { *dst = *src; }
  static __device__ __forceinline__ bf16 raw(const bf16* p) { return *p; }
};

// NORM: the `groups` threads of a head (consecutive lanes, a power of two) sum its squares by
// shuffles, so every thread runs the same number of iterations and whole warps shuffle together.
template <int kVec, bool NORM>
__global__ void __launch_bounds__(threads) rope_store_kv_kernel(const RopeStoreArgs a) {
  using L = Lane<kVec>;
  const int64_t t = blockIdx.x;
  const int d = a.head_dim, half = d / 2;
  const int q_size = a.num_heads * d, kv_size = a.num_kv_heads * d;
  bf16* const row = a.qkv + t * (q_size + 2 * kv_size);
  const int pos = a.positions[t];
  const int slot = a.slot_mapping[t];
  const bool rotate = pos >= 0 && pos < a.max_positions;
  const bool cache = slot >= 0 && slot < a.num_slots;
  const int groups = half / kVec;  // vectors per half head
  const int items = (a.num_heads + a.num_kv_heads) * groups;
  const int rounds = (items + blockDim.x - 1) / blockDim.x;
  // Positions and slots are step inputs, copied in before the step's first kernel, and cos, sin and
  // the norm weights are constants: the first round's are read before the wait, so that after it
  // only the loads of this step's q, k and v (in flight together) stand between the wait and the stores.
  float c[kVec], s[kVec], g1[kVec], g2[kVec];
  auto load_constants = [&](int item) {
    const int h = item / groups, i = (item - h * groups) * kVec;
    if (rotate) {
      L::load(a.cos + static_cast<int64_t>(pos) * half + i, c);
      L::load(a.sin + static_cast<int64_t>(pos) * half + i, s);
    }
    if (NORM) {
      const bf16* const w = h < a.num_heads ? a.q_norm : a.k_norm;
      L::load(w + i, g1);
      L::load(w + half + i, g2);
    }
  };
  if (static_cast<int>(threadIdx.x) < items) load_constants(threadIdx.x);
  let_next_kernel_start();
  wait_for_previous_kernel();

  // The v this thread copies into the cache first, loaded now beside the rope's loads.
  const bf16* const v_src = row + q_size + kv_size;
  bf16* const v_dst = a.v_cache + static_cast<int64_t>(slot) * kv_size;
  const int v0 = threadIdx.x * kVec;
  decltype(L::raw(v_src)) v_first{};
  if (cache && v0 < kv_size) v_first = L::raw(v_src + v0);

  for (int r = 0; r < rounds; ++r) {
    const int item = r * blockDim.x + threadIdx.x;
    const bool active = item < items;
    const int h = active ? item / groups : 0, i = active ? (item - h * groups) * kVec : 0;
    bf16* const x = row + h * d + i;
    float x1[kVec], x2[kVec];
    if (r > 0 && active) load_constants(item);
    if (active) {
      L::load(x, x1);
      L::load(x + half, x2);
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j) x1[j] = x2[j] = 0.0f;
    }
    if constexpr (NORM) {
      const float inv_rms = rope_math::head_inverse_rms(x1, x2, groups, d, a.norm_eps);
      if (active) {
        rope_math::normalise(x1, g1, inv_rms);
        rope_math::normalise(x2, g2, inv_rms);
      }
    }
    if (!active) continue;
    if (rotate) rope_math::rotate(x1, x2, c, s);
    const auto p1 = L::pack(x1), p2 = L::pack(x2);
    L::store(x, p1);
    L::store(x + half, p2);
    if (cache && h >= a.num_heads) {
      bf16* const k = a.k_cache + static_cast<int64_t>(slot) * kv_size + (h - a.num_heads) * d + i;
      L::store(k, p1);
      L::store(k + half, p2);
    }
  }
  if (!cache) return;
  if (v0 < kv_size) L::store(v_dst + v0, v_first);
  for (int i = v0 + blockDim.x * kVec; i < kv_size; i += blockDim.x * kVec) L::copy(v_src + i, v_dst + i);
}

}  // namespace

void rope_store_kv(const RopeStoreArgs& a, cudaStream_t stream) {
  if (a.num_tokens == 0) return;
  if (a.head_dim <= 0 || a.head_dim % 2 != 0) throw std::invalid_argument("rope_store_kv: head_dim must be even");
  if (a.num_tokens > 0x7fffffff) throw std::invalid_argument("rope_store_kv: more than 2^31 tokens");
  const int half = a.head_dim / 2;
  const bool vectorised = half % 8 == 0 && is_aligned(a.qkv, 16) && is_aligned(a.k_cache, 16) &&
                          is_aligned(a.v_cache, 16) && is_aligned(a.cos, 16) && is_aligned(a.sin, 16);
  const dim3 grid(static_cast<unsigned>(a.num_tokens));
  const bool norm = a.q_norm != nullptr;
  const int groups = half / 8;
  // The fused norm needs a head's threads to be a power-of-two group of lanes: 16-byte vectors and
  // head_dim 16, 32, 64, 128 or 256.
  if (norm && vectorised && is_aligned(a.q_norm, 16) && is_aligned(a.k_norm, 16) &&
      (groups & (groups - 1)) == 0 && groups <= 32) {
    launch_overlapped<rope_store_kv_kernel<8, true>>(grid, dim3(threads), 0, stream, a);
    TROUPE_CUDA_CHECK_LAUNCH(rope_store_kv_kernel);
    return;
  }
  if (norm)
    qk_norm(a.qkv, a.num_tokens, a.num_heads, a.num_kv_heads, a.head_dim, a.q_norm, a.k_norm, a.norm_eps, stream);
  if (vectorised) {
    launch_overlapped<rope_store_kv_kernel<8, false>>(grid, dim3(threads), 0, stream, a);
    TROUPE_CUDA_CHECK_LAUNCH(rope_store_kv_kernel);
  } else {
    launch_overlapped<rope_store_kv_kernel<1, false>>(grid, dim3(threads), 0, stream, a);
    TROUPE_CUDA_CHECK_LAUNCH(rope_store_kv_kernel);
  }
}

}  // namespace troupe::cuda
