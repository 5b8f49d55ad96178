// Sampling, one block of 1024 threads per row, in passes over the row:
//
//   P1  raw logits → mask, penalties (÷ temperature) into `work`; max of the raw logits; argmax
//   P2  w = exp(x − max) into `work`; min_p's threshold (the smallest w ≥ min_p)
//   top_k: radix select of the k-th largest surviving w (3 histogram passes over its bits)
//   top_p: radix search of the largest v with Σ_{w ≥ v} w ≥ top_p · Σ w (3 passes, histograms of mass)
//   draw: inverse CDF over survivors in id order (one pass for per-warp sums, one warp's walk)
//   logprobs: log-sum-exp and rank over the raw logits; top-n by a radix select plus an ordered
//   collection of ties
//
// Matching engine/sampler.hpp exactly is the point. Penalties and temperature use the same float
// operations without contraction (__fmul_rn and friends, no FMA); w is exp computed in double and
// rounded to float, which equals glibc 2.36's expf on all but 8.7e-5 of the floats in [−104, 0]
// (checked exhaustively on the host);
// masses are sums of w in 64-bit fixed point (w · 2^s, s = 62 − bit_width(vocab), so no sum can
// overflow). Integer sums do not depend on the order of addition: every pass, block and run gets
// the same totals, and the result is deterministic. Against the CPU's double sums they differ by
// at most vocab · 2^-(s+1) (about 4e-9 for 152k tokens), which can only matter when u · total (or
// top_p · total) falls that close to a boundary between two tokens.
//
// Measured on an H200 with a 152k vocabulary (bf16 logits): one row takes 24 µs greedy, 100 µs at
// T = 1, 244 µs with top_k + top_p + min_p; 256 rows take 0.05, 0.38 and 0.64 ms. A row is one block
// on one SM, so small batches are latency-bound: spreading a row over a cluster of blocks is the next
// step there. The double-precision exp costs about a third of the T = 1 time.
#include <cuda_bf16.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include "kernels/common.cuh"
#include "kernels/sampling.cuh"

namespace troupe::cuda {
namespace {

constexpr int threads = 1024;
constexpr int warps = threads / warp_size;
constexpr int radix_bins = 2048;  // the widest digit is 11 bits
constexpr uint32_t prompt_bit = 0x80000000u;

using u64 = unsigned long long;

struct Shared {
  // Radix histograms as two 32-bit halves: shared-memory atomics are native for 32 bits, while a
  // 64-bit atomicAdd compiles to a compare-and-swap loop (ATOMS.CAST.SPIN.64) that contended bins
  // spin on.
  uint32_t hist_lo[radix_bins];
  uint32_t hist_hi[radix_bins];
  u64 red_u64[warps];
  double red_f64[warps];
  float red_f32[warps];
  int32_t red_i32[warps];
  uint32_t digit;
  u64 above;
  int32_t token;
  int32_t gt_count;
  int32_t gt_ids[max_top_logprobs];
  int32_t tie_count[warps];
  int32_t tie_ids[warps][max_top_logprobs];
};

// ---- block-wide helpers: each returns the same value to every thread, combining the warps in a
// fixed order (deterministic also for floating point), and leaves its shared slots free again.
//
// The block has exactly warp_size warps, so the second stage is one more warp-wide step that every
// warp performs redundantly on the 32 partials (no broadcast slot, no loop). A loop over the
// partials is what this file had first, and nvcc 13.0 miscompiled it: in the 8-way unrolled
// remainder of `for (w = 1; w < 32; ++w)` the loads of partials 25-27 used the 16-way block's
// offsets and read 41-43 instead (seen in the SASS, sm_90a, -O2; warps 25-27 dropped out of every
// block argmax). Keep these free of loops over shared-memory arrays.
static_assert(warps == warp_size, "the second reduction stage is one warp wide");

template <class T, class Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int offset = warp_size / 2; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

template <class T, class Op>
__device__ T block_reduce(T v, Op op, T* partial) {
  v = warp_reduce(v, op);
  if (threadIdx.x % warp_size == 0) partial[threadIdx.x / warp_size] = v;
  __syncthreads();
  const T r = warp_reduce(partial[threadIdx.x % warp_size], op);
  __syncthreads();
  return r;
}

struct Sum {
  template <class T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
  template <class T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};
struct Min {
  template <class T>
  __device__ T operator()(T a, T b) const { return a < b ? a : b; }
};

// (value, index) with the larger value winning and the lower index breaking ties: argmax's rule.
__device__ __forceinline__ bool better(float v, int32_t i, float best, int32_t best_i) {
  return v > best || (v == best && i < best_i);
}

__device__ __forceinline__ void warp_argmax(float& best, int32_t& best_i) {
#pragma unroll
  for (int offset = warp_size / 2; offset > 0; offset /= 2) {
    const float v = __shfl_xor_sync(0xffffffffu, best, offset);
    const int32_t i = __shfl_xor_sync(0xffffffffu, best_i, offset);
    if (better(v, i, best, best_i)) {
      best = v;
      best_i = i;
    }
  }
}

__device__ void block_argmax(float& best, int32_t& best_i, Shared& sh) {
  warp_argmax(best, best_i);
  if (threadIdx.x % warp_size == 0) {
    sh.red_f32[threadIdx.x / warp_size] = best;
    sh.red_i32[threadIdx.x / warp_size] = best_i;
  }
  __syncthreads();
  best = sh.red_f32[threadIdx.x % warp_size];
  best_i = sh.red_i32[threadIdx.x % warp_size];
  warp_argmax(best, best_i);
  __syncthreads();
}

__device__ __forceinline__ u64 warp_inclusive_scan(u64 v, int lane) {
#pragma unroll
  for (int offset = 1; offset < warp_size; offset *= 2) {
    const u64 x = __shfl_up_sync(0xffffffffu, v, offset);
    if (lane >= offset) v += x;
  }
  return v;
}

// Inclusive prefix over threads in thread order; `total` gets the block's sum.
__device__ u64 block_inclusive_scan(u64 v, u64& total, u64* partial) {
  const int lane = threadIdx.x % warp_size, warp = threadIdx.x / warp_size;
  v = warp_inclusive_scan(v, lane);
  if (lane == warp_size - 1) partial[warp] = v;
  __syncthreads();
  const u64 warps_inclusive = warp_inclusive_scan(partial[lane], lane);
  const u64 before = __shfl_sync(0xffffffffu, warps_inclusive, (warp + warp_size - 1) % warp_size);
  total = __shfl_sync(0xffffffffu, warps_inclusive, warp_size - 1);
  __syncthreads();
  return (warp > 0 ? before : 0) + v;
}

// Visits i = threadIdx.x + j·threads over [0, vocab) with kUnroll loads in flight per thread before
// their first use: one load at a time left a block on one SM waiting on L2 latency (a pass over 152k
// floats took ~55 µs). The trip count is the same for every thread (indices ≥ vocab are visited with
// a default value), so `use` may contain warp collectives; it must ignore i ≥ vocab.
constexpr int sweep_unroll = 4;

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }

template <class Load, class Use>
__device__ __forceinline__ void sweep(int32_t vocab, Load load, Use use) {
  using T = decltype(load(0));
  for (int32_t base = 0; base < vocab; base += sweep_unroll * threads) {
    T v[sweep_unroll];
#pragma unroll
    for (int j = 0; j < sweep_unroll; ++j) {
      const int32_t i = base + j * threads + static_cast<int32_t>(threadIdx.x);
      v[j] = i < vocab ? load(i) : T{};
    }
#pragma unroll
    for (int j = 0; j < sweep_unroll; ++j) use(base + j * threads + static_cast<int32_t>(threadIdx.x), v[j]);
  }
}

// sweep() over a row of f32 or bf16 values, 16 bytes per load where the row allows it (4 floats or 8
// bf16 per thread and step); `use` sees every element once, in increasing i per thread.
template <class T, class Use>
__device__ __forceinline__ void sweep_row(const T* row, int32_t vocab, Use use) {
  constexpr int per = 16 / sizeof(T);
  using Pack = std::conditional_t<sizeof(T) == 4, float4, uint4>;
  if (vocab % per != 0 || reinterpret_cast<uintptr_t>(row) % 16 != 0) {
    sweep(vocab, [&](int32_t i) { return to_f32(row[i]); }, use);
    return;
  }
  const int32_t packs = vocab / per;
  constexpr int unroll = 2;
  for (int32_t base = 0; base < packs; base += unroll * threads) {
    Pack v[unroll];
#pragma unroll
    for (int j = 0; j < unroll; ++j) {
      const int32_t q = base + j * threads + static_cast<int32_t>(threadIdx.x);
      v[j] = q < packs ? reinterpret_cast<const Pack*>(row)[q] : Pack{};
    }
#pragma unroll
    for (int j = 0; j < unroll; ++j) {
      const int32_t first = (base + j * threads + static_cast<int32_t>(threadIdx.x)) * per;
      const T* e = reinterpret_cast<const T*>(&v[j]);
#pragma unroll
      for (int k = 0; k < per; ++k) use(first + k, to_f32(e[k]));
    }
  }
}

// ---- radix search ------------------------------------------------------------------------------------
//
// Over the 32-bit keys of the elements with a positive contribution c(i): the largest key K such that
// Σ_{key ≥ K} c ≥ need, where need = need_of(Σ c) (0: give up). Digits of 11, 11 and 10 bits from
// the top; each pass histograms the contributions of the elements that share the digits found so
// far. With c = 1 this is the need-th largest key (a radix select); with c = mass it is top_p's
// boundary. `above` returns Σ c over keys > K.

struct RadixResult {
  bool found;
  uint32_t key;
  u64 above;
};

// visit(use) calls use(i, value) for every element (sweep_row); contribution(value, key) sets the
// element's key and returns its contribution.
template <class Visit, class Contribution, class NeedOf>
__device__ RadixResult radix_search(int32_t vocab, Visit visit, Contribution contribution, NeedOf need_of, Shared& sh) {
  uint32_t prefix = 0, prefix_mask = 0;
  u64 above = 0, need = 0;
#pragma unroll 1
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = pass == 0 ? 21 : (pass == 1 ? 10 : 0);
    const uint32_t bins = pass == 2 ? 1024u : 2048u;
    for (uint32_t b = threadIdx.x; b < bins; b += threads) {
      sh.hist_lo[b] = 0;
      sh.hist_hi[b] = 0;
    }
    __syncthreads();
    // Plain shared-memory atomics: after the first pass nearly every element fails the prefix test, and
    // aggregating lanes with __match_any_sync cost more than the collisions it saved (45 µs a pass).
    visit([&](int32_t i, float value) {
      if (i >= vocab) return;
      uint32_t key = 0;
      const u64 c = contribution(value, key);
      if (c > 0 && (key & prefix_mask) == prefix) {
        const uint32_t bin = (key >> shift) & (bins - 1);
        const uint32_t lo = static_cast<uint32_t>(c), hi = static_cast<uint32_t>(c >> 32);
        const uint32_t old = atomicAdd(&sh.hist_lo[bin], lo);
        const uint32_t carry = old + lo < old ? 1u : 0u;  // this add wrapped the low half
        if (hi + carry != 0) atomicAdd(&sh.hist_hi[bin], hi + carry);
      }
    });
    __syncthreads();

    // Thread t owns bins [t·per, (t + 1)·per); higher threads own higher bins.
    const uint32_t per = bins / threads;
    const auto hist = [&](uint32_t b) { return (static_cast<u64>(sh.hist_hi[b]) << 32) + sh.hist_lo[b]; };
    u64 local = 0;
#pragma unroll 1
    for (uint32_t j = 0; j < per; ++j) local += hist(threadIdx.x * per + j);
    u64 total;
    const u64 inclusive = block_inclusive_scan(local, total, sh.red_u64);
    if (pass == 0) {
      need = need_of(total);
      if (need == 0) return {false, 0, 0};
    }
    const u64 higher = above + (total - inclusive);  // Σ over bins above this thread's
    if (higher < need && need <= higher + local) {
      u64 acc = higher;
      for (int j = static_cast<int>(per) - 1; j >= 0; --j) {
        const uint32_t b = threadIdx.x * per + j;
        if (acc + hist(b) >= need) {
          sh.digit = b;
          sh.above = acc;
          break;
        }
        acc += hist(b);
      }
    }
    __syncthreads();
    prefix |= sh.digit << shift;
    prefix_mask |= (bins - 1) << shift;
    above = sh.above;
    __syncthreads();
  }
  return {true, prefix, above};
}

// ---- per-row steps -------------------------------------------------------------------------------------

__device__ __forceinline__ float load_logit(const void* row, int32_t i, bool bf16_logits) {
  return bf16_logits ? __bfloat162float(static_cast<const bf16*>(row)[i]) : static_cast<const float*>(row)[i];
}

__device__ bool is_banned(const int32_t* banned, int32_t count, int32_t id) {
  int32_t lo = 0, hi = count;
  while (lo < hi) {
    const int32_t mid = lo + (hi - lo) / 2;
    if (banned[mid] < id) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo < count && banned[lo] == id;
}

// Raw logits ordered as unsigned integers (negative floats flipped), −0 folded onto +0 so that the
// two compare equal as floats do.
__device__ __forceinline__ uint32_t sortable(float x) {
  uint32_t bits = __float_as_uint(x);
  if (bits == 0x80000000u) bits = 0;
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

__device__ __forceinline__ u64 fixed(float w, double scale) { return __double2ull_rn(static_cast<double>(w) * scale); }

// Inverse CDF over the survivors (w ≥ tau, w > 0) in id order with masses in fixed point: the first
// survivor whose cumulative mass exceeds ⌊u · total⌋, or the last survivor when u · total rounds up
// to the total (as sample_from returns its last token).
__device__ int32_t draw(const float* w, int32_t vocab, float tau, double u, double scale, Shared& sh) {
  const int lane = threadIdx.x % warp_size, warp = threadIdx.x / warp_size;
  const int32_t segment = ((vocab + warps - 1) / warps + warp_size - 1) / warp_size * warp_size;
  const int32_t seg_begin = warp * segment;
  const int32_t seg_end = min(vocab, seg_begin + segment);
  auto mass = [&](int32_t i) -> u64 {
    if (i >= seg_end) return 0;
    const float x = w[i];
    return (x >= tau && x > 0.0f) ? fixed(x, scale) : 0;
  };

  u64 sum = 0;
  int32_t last = -1;
  for (int32_t base = seg_begin + lane; base < seg_end; base += sweep_unroll * warp_size) {
    float x[sweep_unroll];
#pragma unroll
    for (int j = 0; j < sweep_unroll; ++j) {
      const int32_t i = base + j * warp_size;
      x[j] = i < seg_end ? w[i] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < sweep_unroll; ++j) {
      if (x[j] >= tau && x[j] > 0.0f) {
        sum += fixed(x[j], scale);
        last = base + j * warp_size;
      }
    }
  }
  sum = warp_reduce(sum, Sum{});
  if (lane == 0) sh.red_u64[warp] = sum;
  last = block_reduce(last, Max{}, sh.red_i32);  // its barriers also publish red_u64

  // Every warp scans the 32 warp sums: the grand total, and the first warp whose running sum passes
  // the target.
  const u64 running = warp_inclusive_scan(sh.red_u64[lane], lane);
  const u64 grand = __shfl_sync(0xffffffffu, running, warp_size - 1);
  const double scaled = u * static_cast<double>(grand);
  const u64 target = static_cast<u64>(floor(scaled));
  if (!(scaled < static_cast<double>(grand)) || target >= grand) return last;
  const int chosen = __ffs(__ballot_sync(0xffffffffu, running > target)) - 1;
  const u64 through_chosen = __shfl_sync(0xffffffffu, running, chosen);
  const u64 before = through_chosen - __shfl_sync(0xffffffffu, sh.red_u64[lane], chosen);
  if (warp == chosen) {
    u64 carry = before;
    for (int32_t step = seg_begin; step < seg_end; step += warp_size) {
      const int32_t i = step + lane;
      const u64 m = mass(i);
      const u64 inclusive = warp_inclusive_scan(m, lane);
      const unsigned crossing = __ballot_sync(0xffffffffu, m > 0 && carry + inclusive > target);
      if (crossing) {
        if (lane == __ffs(crossing) - 1) sh.token = i;
        break;
      }
      carry += __shfl_sync(0xffffffffu, inclusive, warp_size - 1);
    }
  }
  __syncthreads();
  const int32_t token = sh.token;
  __syncthreads();
  return token;
}

// log_softmax of the raw logits at `token`, its rank and the top n, into `out` (thread 0 writes).
__device__ void logprobs(const void* raw, bool bf16_logits, int32_t vocab, float raw_max, int32_t token, int n,
                         SampleRowResult* out, Shared& sh) {
  const int lane = threadIdx.x % warp_size, warp = threadIdx.x / warp_size;
  const float chosen = load_logit(raw, token, bf16_logits);
  double sum = 0.0;
  int32_t larger = 0;
  const auto visit_raw = [&](auto use) {
    if (bf16_logits) {
      sweep_row(static_cast<const bf16*>(raw), vocab, use);
    } else {
      sweep_row(static_cast<const float*>(raw), vocab, use);
    }
  };
  visit_raw([&](int32_t i, float x) {
    if (i >= vocab) return;
    sum += static_cast<double>(expf(x - raw_max));
    larger += x > chosen;
  });
  sum = block_reduce(sum, Sum{}, sh.red_f64);
  larger = block_reduce(larger, Sum{}, sh.red_i32);
  const double log_z = static_cast<double>(raw_max) + log(sum);

  n = min(n, static_cast<int>(vocab));
  int32_t gt = 0;
  uint32_t kth = 0;
  if (n > 0) {
    const RadixResult r = radix_search(
        vocab, visit_raw,
        [&](float x, uint32_t& key) -> u64 {
          key = sortable(x);
          return 1;
        },
        [&](u64) -> u64 { return static_cast<u64>(n); }, sh);
    kth = r.key;
    gt = static_cast<int32_t>(r.above);  // < n keys are larger than the n-th largest
    if (threadIdx.x == 0) sh.gt_count = 0;
    __syncthreads();
    // Keys above the n-th: any order (sorted below). Keys equal to it: the lowest ids, so each warp
    // collects the first ties of its contiguous segment in id order, and segments are in id order.
    const int32_t want_ties = n - gt;
    const int32_t segment = ((vocab + warps - 1) / warps + warp_size - 1) / warp_size * warp_size;
    const int32_t seg_begin = warp * segment, seg_end = min(vocab, seg_begin + segment);
    int32_t ties = 0;
    for (int32_t step = seg_begin; step < seg_end; step += warp_size) {
      const int32_t i = step + lane;
      const uint32_t key = i < seg_end ? sortable(load_logit(raw, i, bf16_logits)) : 0;
      const bool in = i < seg_end;
      if (in && key > kth) sh.gt_ids[atomicAdd(&sh.gt_count, 1)] = i;
      const unsigned tie = __ballot_sync(0xffffffffu, in && key == kth);
      if (ties < want_ties && in && key == kth) {
        const int32_t at = ties + __popc(tie & ((1u << lane) - 1u));
        if (at < want_ties) sh.tie_ids[warp][at] = i;
      }
      ties = min(want_ties, ties + __popc(tie));
    }
    if (lane == 0) sh.tie_count[warp] = ties;
    __syncthreads();
  }

  if (threadIdx.x == 0) {
    out->token = token;
    out->logprob = static_cast<float>(static_cast<double>(chosen) - log_z);
    out->rank = 1 + larger;
    out->num_top = n;
    if (n > 0) {
      int32_t ids[max_top_logprobs];
      int count = 0;
      // Plain loops (no unrolling) over shared memory: see the note on nvcc 13.0 above.
#pragma unroll 1
      for (int j = 0; j < gt; ++j) ids[count++] = sh.gt_ids[j];
#pragma unroll 1
      for (int v = 0; v < warps && count < n; ++v) {
#pragma unroll 1
        for (int j = 0; j < sh.tie_count[v] && count < n; ++j) ids[count++] = sh.tie_ids[v][j];
      }
      // Insertion sort by (logit descending, id ascending): at most 20 entries.
      float vals[max_top_logprobs];
      for (int j = 0; j < count; ++j) vals[j] = load_logit(raw, ids[j], bf16_logits);
      for (int j = 1; j < count; ++j) {
        const float v = vals[j];
        const int32_t id = ids[j];
        int at = j;
        while (at > 0 && (vals[at - 1] < v || (vals[at - 1] == v && ids[at - 1] > id))) {
          vals[at] = vals[at - 1];
          ids[at] = ids[at - 1];
          --at;
        }
        vals[at] = v;
        ids[at] = id;
      }
      for (int j = 0; j < count; ++j) {
        out->top_ids[j] = ids[j];
        out->top_logprobs[j] = static_cast<float>(static_cast<double>(vals[j]) - log_z);
      }
    }
  }
  __syncthreads();
}

__global__ void __launch_bounds__(threads, 1) sample_kernel(const SampleLaunch p, double scale) {
  __shared__ Shared sh;
  float* work = p.work + static_cast<int64_t>(blockIdx.x) * p.vocab;
  const int32_t vocab = p.vocab;

  for (int32_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const SampleRowParams q = p.params[row];
    const void* raw = p.logits_bf16
                          ? static_cast<const void*>(static_cast<const bf16*>(p.logits) + row * p.row_stride)
                          : static_cast<const void*>(static_cast<const float*>(p.logits) + row * p.row_stride);
    const int32_t* banned = p.banned + q.ban_begin;
    const int32_t* counts = q.slot >= 0 ? p.counts + static_cast<int64_t>(q.slot) * vocab : nullptr;
    const bool greedy = q.greedy != 0;
    const bool repetition = q.repetition_penalty != 1.0f;
    const bool additive = q.frequency_penalty != 0.0f || q.presence_penalty != 0.0f;

    // P1: the CPU sampler's apply_min_tokens, apply_penalties and ÷ temperature, in that order.
    float raw_max = -INFINITY, best = -INFINITY;
    int32_t best_i = INT32_MAX;
    const auto p1 = [&](int32_t i, float r) {
      if (i >= vocab) return;
      raw_max = fmaxf(raw_max, r);
      float x = r;
      if (q.ban_count > 0 && is_banned(banned, q.ban_count, i)) x = -INFINITY;
      if (counts) {
        const uint32_t c = static_cast<uint32_t>(counts[i]);
        const uint32_t output = c & ~prompt_bit;
        if (repetition && c != 0) x = x > 0.0f ? __fdiv_rn(x, q.repetition_penalty) : __fmul_rn(x, q.repetition_penalty);
        if (additive && output > 0)
          x = __fsub_rn(x, __fadd_rn(__fmul_rn(q.frequency_penalty, static_cast<float>(output)), q.presence_penalty));
      }
      if (!greedy) {
        x = __fdiv_rn(x, q.temperature);
        work[i] = x;
      }
      if (better(x, i, best, best_i)) {
        best = x;
        best_i = i;
      }
    };
    // 16-byte loads suit the read-only greedy pass. A sampled row also writes `work` element by
    // element, and those stores must stay coalesced across the warp (8 consecutive floats per thread
    // made each store instruction touch 8× the sectors: 105 → 173 µs for a 152k row, H200).
    if (greedy && p.logits_bf16) {
      sweep_row(static_cast<const bf16*>(raw), vocab, p1);
    } else if (greedy) {
      sweep_row(static_cast<const float*>(raw), vocab, p1);
    } else {
      sweep(vocab, [&](int32_t i) { return load_logit(raw, i, p.logits_bf16); }, p1);
    }
    block_argmax(best, best_i, sh);
    raw_max = block_reduce(raw_max, Max{}, sh.red_f32);

    int32_t token;
    if (greedy) {
      token = best_i < vocab ? best_i : 0;  // no candidate only when every logit is NaN
    } else if (best == -INFINITY) {
      token = 0;  // every token masked: the CPU sampler's answer
    } else {
      // P2: weights; the maximum's is exp(0) = 1 exactly, so min_p's limit is min_p itself.
      const float max_scaled = best;
      const bool use_min_p = q.min_p > 0.0;
      float tau = 1.0f;
      const auto weight = [&](float x) {
        const float w = static_cast<float>(exp(static_cast<double>(__fsub_rn(x, max_scaled))));
        if (use_min_p && static_cast<double>(w) >= q.min_p && w < tau) tau = w;
        return w;
      };
      // Scalar accesses with four loads in flight (sweep), stores coalesced across the warp.
      sweep(vocab, [&](int32_t i) { return work[i]; }, [&](int32_t i, float x) {
        if (i < vocab) work[i] = weight(x);
      });
      tau = use_min_p ? block_reduce(tau, Min{}, sh.red_f32) : 0.0f;
      if (!use_min_p) __syncthreads();  // the passes below read weights other threads wrote

      if (q.top_k > 0) {
        const float t = tau;
        const auto visit_work = [&](auto use) { sweep_row(static_cast<const float*>(work), vocab, use); };
        const RadixResult r = radix_search(
            vocab, visit_work,
            [&](float w, uint32_t& key) -> u64 {
              key = __float_as_uint(w);  // w ≥ 0: its bits order as the values do
              return (w >= t && w > 0.0f) ? 1 : 0;
            },
            [&](u64 total) -> u64 { return total < static_cast<u64>(q.top_k) ? 0 : static_cast<u64>(q.top_k); }, sh);
        if (r.found) tau = fmaxf(tau, __uint_as_float(r.key));
      }
      if (q.top_p < 1.0) {
        const float t = tau;
        const auto visit_work = [&](auto use) { sweep_row(static_cast<const float*>(work), vocab, use); };
        const RadixResult r = radix_search(
            vocab, visit_work,
            [&](float w, uint32_t& key) -> u64 {
              key = __float_as_uint(w);
              return (w >= t && w > 0.0f) ? fixed(w, scale) : 0;
            },
            [&](u64 total) -> u64 {
              // cumulative ≥ top_p · total, for integer sums: cumulative ≥ ⌈top_p · total⌉.
              const double target = ceil(q.top_p * static_cast<double>(total));
              const u64 need = static_cast<u64>(target);
              return need < 1 ? 1 : (need > total ? total : need);
            },
            sh);
        if (r.found) tau = fmaxf(tau, __uint_as_float(r.key));
      }
      token = max(0, draw(work, vocab, tau, q.u, scale, sh));
    }

    if (threadIdx.x == 0) {
      p.tokens[row] = token;
      if (p.record && q.slot >= 0) atomicAdd(p.counts + static_cast<int64_t>(q.slot) * vocab + token, 1);
    }
    if (p.results && q.top_logprobs >= 0)
      logprobs(raw, p.logits_bf16, vocab, raw_max, token, q.top_logprobs, p.results + row, sh);
    __syncthreads();  // the next row reuses shared memory and `work`
  }
}

__global__ void mark_prompt_kernel(int32_t* counts_row, const int32_t* ids, int64_t n, int32_t vocab) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t id = ids[i];
    if (id >= 0 && id < vocab) atomicOr(reinterpret_cast<unsigned*>(counts_row + id), prompt_bit);
  }
}

__global__ void record_tokens_kernel(int32_t* counts, int32_t vocab, const int32_t* slots, const int32_t* tokens,
                                     int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t slot = slots[i], token = tokens[i];
    if (slot >= 0 && token >= 0 && token < vocab) atomicAdd(counts + static_cast<int64_t>(slot) * vocab + token, 1);
  }
}

unsigned small_grid(int64_t n) { return static_cast<unsigned>(std::min<int64_t>(ceil_div(n, 256), 1024)); }

}  // namespace

void sample(const SampleLaunch& launch, cudaStream_t stream) {
  if (launch.rows == 0) return;
  if (launch.vocab < 1 || launch.grid < 1) throw std::invalid_argument("sample: empty vocabulary or grid");
  // Fixed-point masses: w ≤ 1, so vocab · 2^s < 2^62 keeps every sum inside 64 bits.
  const int s = 62 - static_cast<int>(std::bit_width(static_cast<uint32_t>(launch.vocab)));
  const double scale = std::ldexp(1.0, s);
  const unsigned grid = static_cast<unsigned>(std::min(launch.grid, launch.rows));
  sample_kernel<<<grid, threads, 0, stream>>>(launch, scale);
  TROUPE_CUDA_CHECK_LAUNCH(sample_kernel);
}

void mark_prompt(int32_t* counts_row, const int32_t* ids, int64_t n, int32_t vocab, cudaStream_t stream) {
  if (n == 0) return;
  mark_prompt_kernel<<<small_grid(n), 256, 0, stream>>>(counts_row, ids, n, vocab);
  TROUPE_CUDA_CHECK_LAUNCH(mark_prompt_kernel);
}

void record_tokens(int32_t* counts, int32_t vocab, const int32_t* slots, const int32_t* tokens, int64_t n,
                   cudaStream_t stream) {
  if (n == 0) return;
  record_tokens_kernel<<<small_grid(n), 256, 0, stream>>>(counts, vocab, slots, tokens, n);
  TROUPE_CUDA_CHECK_LAUNCH(record_tokens_kernel);
}

}  // namespace troupe::cuda
