// The rope and cache write of a decode step's new tokens, done by the decode attention kernel itself
// (paged_decode.cu, DecodeRope::rotate and norm_rotate) instead of rope_store_kv_kernel before it,
// a one-CTA kernel whose few kilobytes of work cost a kernel hand-over. Each CTA rotates the query
// heads it attends with, and the CTA whose keys include the sequence's newest one (context − 1)
// rotates that key's head as well, puts k and v into its shared K/V tile and stores them into the
// cache, with rope_kv.cu's arithmetic (rope_math.cuh), so that the attention output and the cache are
// the same bits as after the two kernels. q and k stay unrotated in qkv. Included by paged_decode.cu
// only. llama-3.1-8b's batch-1 decode step on 4 × H200 (TROUPE_ROPE_IN_ATTENTION=0 keeps the two
// kernels): tp1 4.462 -> 4.441 ms, tp2 2.933 -> 2.906, tp4 1.747 -> 1.745; less than the rope
// kernel's ~3 µs a layer, as the attention kernel's loads before its wait already overlapped it.
#pragma once

#include "kernels/attention_tiles.cuh"
#include "kernels/rope_math.cuh"

namespace troupe::cuda::attn {

// Who rotates q and k before the decode kernel reads them: rope_store_kv_kernel, which ran before it
// (none), or the decode kernel (rotate; norm_rotate: Qwen3's per-head RMSNorm first).
enum class DecodeRope { none, rotate, norm_rotate };

// One CTA's part of its sequence's new token: as rope_store_kv_kernel<8, NORM> splits a token's
// heads, each head over `groups` consecutive threads that take 8 pairs (x_i, x_{i + D/2}) each, so
// that the norm's sums over a head's lanes are the same shuffles in the same order.
template <int D, bool NORM>
class NewTokenRope {
 public:
  static constexpr int half = D / 2;
  static constexpr int groups = half / 8;
  // Up to 16 query heads and the newest key's head.
  static constexpr int rounds = (17 * groups + kThreads - 1) / kThreads;
  static_assert(half % 8 == 0 && (groups & (groups - 1)) == 0 && groups <= warp_size);
  static_assert(kThreads % groups == 0, "a thread's columns must stay the same in every round");

  // Before the wait: positions and slots are step inputs, copied in before the step's first kernel,
  // and cos, sin and the norm weights are constants (rope_store_kv_kernel reads them there too).
  __device__ __forceinline__ void load_constants(const RopeStoreArgs& r, int token) {
    const int pos = r.positions[token];
    slot_ = r.slot_mapping[token];
    rotate_ = pos >= 0 && pos < r.max_positions;
    cached_ = slot_ >= 0 && slot_ < r.num_slots;
    if (rotate_) {
      rope_math::load(r.cos + static_cast<int64_t>(pos) * half + col(), c_);
      rope_math::load(r.sin + static_cast<int64_t>(pos) * half + col(), s_);
    }
    if constexpr (NORM) {
      q_g1_ = load8(r.q_norm + col()), q_g2_ = load8(r.q_norm + half + col());
      k_g1_ = load8(r.k_norm + col()), k_g2_ = load8(r.k_norm + half + col());
    }
  }

  // Whether the token's k and v go into the cache (its slot lies in it); where they do not, the
  // kernel reads the newest key from the cache as it would after rope_store_kv.
  __device__ __forceinline__ bool cached() const { return cached_; }

  // After the wait: starts the loads of `rows` query heads from q (D apart), and with new_key of the
  // k head at k and the v head at v.
  __device__ __forceinline__ void load(const bf16* q, const bf16* k, const bf16* v, int rows, bool new_key) {
    rows_ = rows;
    heads_ = rows + (new_key ? 1 : 0);
#pragma unroll
    for (int r = 0; r < rounds; ++r) {
      const int h = head(r);
      if (h >= heads_) continue;
      const bf16* const x = h < rows ? q + h * D : k;
      x1_[r] = load8(x + col());
      x2_[r] = load8(x + half + col());
    }
    if (new_key && threadIdx.x < D / 8) v_ = load8(v + threadIdx.x * 8);
  }

  // Once the first K/V tile has landed (its newest row zero-filled): the rotated query heads into
  // the q tile qs (16 rows of kRow<D>, rows past `rows` zero, as load_q_tile leaves them), and the
  // new k and v into tile_k and tile_v (the newest key's rows in a copied tile, or null) and into the
  // cache at `head_offset` of the token's slot (slot_stride elements a slot) when it is cached.
  // Every thread of the CTA calls it (the norm's shuffles).
  __device__ __forceinline__ void store(const RopeStoreArgs& r, bf16* qs, bf16* tile_k, bf16* tile_v,
                                        int64_t slot_stride, int64_t head_offset) const {
    bf16* const k_cache = cached_ ? r.k_cache + slot_ * slot_stride + head_offset : nullptr;
#pragma unroll
    for (int rd = 0; rd < rounds; ++rd) {
      if (rd * kThreads >= heads_ * groups) break;  // the same for every thread
      const int h = head(rd);
      const bool active = h < heads_;
      float x1[8], x2[8];
      if (active) {
        x1_[rd].to_floats(x1);
        x2_[rd].to_floats(x2);
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) x1[j] = x2[j] = 0.0f;
      }
      if constexpr (NORM) {
        const float inv_rms = rope_math::head_inverse_rms(x1, x2, groups, D, r.norm_eps);
        if (active) {
          float g1[8], g2[8];
          pick(h < rows_, q_g1_, k_g1_).to_floats(g1);
          pick(h < rows_, q_g2_, k_g2_).to_floats(g2);
          rope_math::normalise(x1, g1, inv_rms);
          rope_math::normalise(x2, g2, inv_rms);
        }
      }
      if (!active) continue;
      if (rotate_) rope_math::rotate(x1, x2, c_, s_);
      const Bf16x8 p1 = Bf16x8::of_floats(x1), p2 = Bf16x8::of_floats(x2);
      if (h < rows_) {
        store8(qs + h * kRow<D> + col(), p1);
        store8(qs + h * kRow<D> + half + col(), p2);
        continue;
      }
      if (tile_k) {
        store8(tile_k + col(), p1);
        store8(tile_k + half + col(), p2);
      }
      if (k_cache) {
        store8(k_cache + col(), p1);
        store8(k_cache + half + col(), p2);
      }
    }
    if (heads_ > rows_ && threadIdx.x < D / 8) {
      if (tile_v) store8(tile_v + threadIdx.x * 8, v_);
      if (cached_) store8(r.v_cache + slot_ * slot_stride + head_offset + threadIdx.x * 8, v_);
    }
    constexpr int chunks = D / 8;
    for (int c = threadIdx.x; c < (16 - rows_) * chunks; c += kThreads)
      store8(qs + (rows_ + c / chunks) * kRow<D> + c % chunks * 8, Bf16x8{});
  }

 private:
  __device__ __forceinline__ static int col() { return static_cast<int>(threadIdx.x) % groups * 8; }
  // a or b by value, word by word: a conditional on the objects would take their addresses and put
  // them on the stack.
  __device__ __forceinline__ static Bf16x8 pick(bool first, const Bf16x8& a, const Bf16x8& b) {
    return {make_uint4(first ? a.raw.x : b.raw.x, first ? a.raw.y : b.raw.y, first ? a.raw.z : b.raw.z,
                       first ? a.raw.w : b.raw.w)};
  }
  __device__ __forceinline__ static int head(int round) {
    return (round * kThreads + static_cast<int>(threadIdx.x)) / groups;
  }

  int slot_ = 0;
  bool rotate_ = false, cached_ = false;
  int rows_ = 0, heads_ = 0;
  float c_[8], s_[8];
  Bf16x8 q_g1_, q_g2_, k_g1_, k_g2_;  // NORM only
  Bf16x8 x1_[rounds], x2_[rounds], v_;
};

}  // namespace troupe::cuda::attn
