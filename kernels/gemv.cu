#include "kernels/gemv.cuh"

#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/gemv_parts.cuh"
#include "kernels/pushed_all_reduce.cuh"

namespace troupe::cuda {
namespace {

using namespace gemv;

constexpr int kWarps = 8;        // per block
constexpr int kThreads = kWarps * 32;
// Vectors of 16 bytes held in registers per lane and row before the wait: the first loads of the
// weight, issued while the previous kernel still runs. At one token, all of a row up to k = 3072
// (qwen3-0.6b's down projection), or four rows of k = 1024 (see launch); more tokens per warp leave
// fewer registers for them.
template <int TOKENS, int ROWS>
constexpr int kPrefetch = ROWS >= 4 ? (TOKENS == 1 ? 4 : 2) : TOKENS == 1 ? 12 : TOKENS == 2 ? 8 : 4;
// LONG (one token, one row a warp, 3072 < k ≤ 4096): the whole row, 16 vectors a lane (llama's
// 1536-row qkv shard at tp4: 7.4 -> 6.0 us a call on an H200, tools/gemv_bench.cu). Only there: where
// fewer vectors cover a row, or none covers it, the extra registers cost occupancy.
// With four rows (one token, 1024 < k ≤ 2048): the four whole rows, 8 vectors a lane each (llama's
// 4096 × 2048 o shard at tp2, whose weight then sits in registers before the wait, as tp4's does).
template <int TOKENS, int ROWS, bool LONG>
constexpr int kPrefetchOf = LONG ? (ROWS == 4 ? 8 : 16) : kPrefetch<TOKENS, ROWS>;

// 16-byte loads in flight per lane after the prefetched ones: enough at one row and one token to
// cover the memory latency with few warps per SM, fewer where rows and tokens multiply registers.
template <int TOKENS, int ROWS>
constexpr int kUnroll = ROWS * TOKENS >= 8 ? 1 : 8 / (ROWS * TOKENS);

// Out::push: lane r · TOKENS + t holds row row0 + r of token t, which goes to every peer's mailbox
// at the same place as in out. Four rows of a token are one 8-byte store, from lane t.
template <int TOKENS, int ROWS>
__device__ __forceinline__ void push_outputs(const Params& p, uint32_t call, int64_t row0, int lane, bf16 value) {
  const uint16_t bits = packs::scrub_element(__bfloat16_as_ushort(value));
  const int me = p.ar.rank;
  if constexpr (ROWS == 4) {
    uint16_t e[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) e[r] = __shfl_sync(0xffffffffu, bits, r * TOKENS + lane % TOKENS);
    if (lane >= TOKENS) return;
    const int64_t at = lane * p.n + row0;
    if (row0 + 3 < p.n && p.n % 4 == 0) {
      const uint2 four{e[0] | uint32_t{e[1]} << 16, e[2] | uint32_t{e[3]} << 16};
      for (int q = 0; q < p.ar.ranks; ++q)
        if (q != me) packs::store_volatile(reinterpret_cast<uint2*>(pushed::slot(p.ar, q, call, me)) + at / 4, four);
      return;
    }
    for (int q = 0; q < p.ar.ranks; ++q)
      if (q != me)
        for (int r = 0; r < 4 && row0 + r < p.n; ++r)
          packs::store_volatile(reinterpret_cast<uint16_t*>(pushed::slot(p.ar, q, call, me)) + at + r, e[r]);
  } else {
    const int r = lane / TOKENS, t = lane % TOKENS;
    if (lane >= ROWS * TOKENS || row0 + r >= p.n) return;
    for (int q = 0; q < p.ar.ranks; ++q)
      if (q != me)
        packs::store_volatile(reinterpret_cast<uint16_t*>(pushed::slot(p.ar, q, call, me)) + t * p.n + row0 + r, bits);
  }
}

// One warp per ROWS consecutive rows of w (four for a wide layer at one or two tokens, else one);
// lanes stride along k by 16-byte vectors, each keeping TOKENS × ROWS partial sums, then a butterfly
// sums the lanes. A plain x is small (at most 8 rows) and read by every warp, from L1/L2; a computed
// input (rms_norm, silu_mul) is computed once per block into shared memory.
//
// Out::push (a pushed all-reduce's sending end, engine/pushed_all_reduce.hpp): every output is also
// sent to the peers' mailboxes, a warp's four rows of a token in one 8-byte store.
template <int TOKENS, int ROWS, GemvInput IN, Out OUT, bool LONG>
__device__ __forceinline__ void gemv_body(const Params& p) {
  constexpr bool ADD = OUT == Out::add;
  extern __shared__ Vec8 staged[];  // computed input: [TOKENS][k / 8]
  const int64_t vecs = p.k / kVec;
  const int lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t row0 = warp * ROWS;
  const bool has_rows = row0 < p.n;

  constexpr int P = kPrefetchOf<TOKENS, ROWS, LONG>;
  Vec8 early[P][ROWS];
  if (has_rows) {
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int64_t v = lane + 32 * i;
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const int64_t row = row0 + r < p.n ? row0 + r : p.n - 1;  // past the end: read a real row, drop it below
        if (v < vecs) early[i][r] = load_vec(p.w + row * p.k + v * kVec);
      }
    }
  }
  prefetch_norm_weight<IN, kThreads>(p);
  let_next_kernel_start();
  wait_for_previous_kernel();

  // Out::push: the call, read once the kernels before have ended.
  uint32_t call = 0;
  if constexpr (OUT == Out::push) call = pushed::current_call(p.ar);
  if constexpr (IN != GemvInput::plain) stage_input<TOKENS, IN, kThreads>(p, staged);
  clock_mark(1);  // input staged (a measurement build's record)
  if (!has_rows) return;
  // add_to_out: the value this lane adds to, loaded now so that its latency hides behind the sums.
  const int r_lane = lane / TOKENS, t_lane = lane % TOKENS;
  const int64_t row_lane = row0 + r_lane;
  const bool writes = lane < ROWS * TOKENS && row_lane < p.n;
  float before = 0.0f;
  if (ADD && writes) before = __bfloat162float(p.out[t_lane * p.n + row_lane]);

  auto input = [&](int t, int64_t v) {
    if constexpr (IN == GemvInput::plain)
      return *reinterpret_cast<const Vec8*>(p.x + t * p.k + v * kVec);
    else
      return staged[t * vecs + v];
  };
  float acc[ROWS][TOKENS];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int t = 0; t < TOKENS; ++t) acc[r][t] = 0.0f;

#pragma unroll
  for (int i = 0; i < P; ++i) {
    const int64_t v = lane + 32 * i;
    if (v < vecs) {
#pragma unroll
      for (int t = 0; t < TOKENS; ++t) {
        const Vec8 xv = input(t, v);
#pragma unroll
        for (int r = 0; r < ROWS; ++r) accumulate(early[i][r], xv, acc[r][t]);
      }
    }
  }
#pragma unroll kUnroll<TOKENS, ROWS>
  for (int64_t v = lane + 32 * P; v < vecs; v += 32) {
    Vec8 xv[TOKENS];
#pragma unroll
    for (int t = 0; t < TOKENS; ++t) xv[t] = input(t, v);
    Vec8 wv[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const int64_t row = row0 + r < p.n ? row0 + r : p.n - 1;
      wv[r] = load_vec(p.w + row * p.k + v * kVec);
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
      for (int t = 0; t < TOKENS; ++t) accumulate(wv[r], xv[t], acc[r][t]);
  }

  clock_mark(2);  // the weight's sums done
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int t = 0; t < TOKENS; ++t) acc[r][t] = warp_sum(acc[r][t]);

  // Lane (r, t) writes one output; the compile-time indices keep acc in registers.
  float value = 0.0f;
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int t = 0; t < TOKENS; ++t)
      if (lane == r * TOKENS + t) value = acc[r][t];
  if (writes) {
    if (p.bias) value += __bfloat162float(p.bias[row_lane]);
    bf16* const o = p.out + t_lane * p.n + row_lane;
    if constexpr (ADD)
      *o = __float2bfloat16_rn(__bfloat162float(__float2bfloat16_rn(value)) + before);
    else
      *o = __float2bfloat16(value);
  }
  if constexpr (OUT == Out::push) push_outputs<TOKENS, ROWS>(p, call, row0, lane, writes ? __float2bfloat16(value) : bf16{});
}

template <int TOKENS, int ROWS, GemvInput IN, Out OUT, bool LONG>
__global__ void __launch_bounds__(kThreads) gemv_kernel(const Params p) {
  gemv_body<TOKENS, ROWS, IN, OUT, LONG>(p);
}
// Four whole rows a warp (LONG, ROWS = 4) in at most 160 registers a thread: a block then fits an SM
// beside a cluster attention CTA (178 registers, 128 threads), so that the o projection's blocks
// start, and load their weight, while the attention before them runs. Uncapped (170 registers) they
// could not, and tp2's step gained 6 µs instead of 46.
template <int TOKENS, int ROWS, GemvInput IN, Out OUT, bool LONG>
__global__ void __maxnreg__(160) gemv_kernel_160(const Params p) {
  gemv_body<TOKENS, ROWS, IN, OUT, LONG>(p);
}

template <int TOKENS, int ROWS, GemvInput IN, Out OUT, bool LONG = false>
void launch_rows(const Params& p, cudaStream_t stream) {
  const int64_t warps = (p.n + ROWS - 1) / ROWS;
  const auto blocks = static_cast<unsigned>((warps + kWarps - 1) / kWarps);
  const size_t smem = IN == GemvInput::plain ? 0 : static_cast<size_t>(TOKENS * p.k) * sizeof(bf16);
  if constexpr (LONG && ROWS == 4)
    launch_overlapped<gemv_kernel_160<TOKENS, ROWS, IN, OUT, LONG>>(dim3(blocks), dim3(kThreads), smem, stream, p);
  else
    launch_overlapped<gemv_kernel<TOKENS, ROWS, IN, OUT, LONG>>(dim3(blocks), dim3(kThreads), smem, stream, p);
  TROUPE_CUDA_CHECK_LAUNCH(gemv_kernel);
}

// Four rows per warp from 3072 rows (96 blocks; 128 at 4096, nearly a block per SM), and
// only at one or two tokens: beyond, four rows' sums for every token would spill registers. Fewer,
// longer-lived warps stream a projection of 4096 to 8000 rows (llama-3.1-8b's qkv, o, and its
// tensor-parallel shards' projections) in one wave, with a quarter of the reads of the input and a
// quarter of the blocks that compute a fused one. The threshold was two blocks per SM (8448 rows)
// until llama-3.1-8b's shards were measured: on an H200, llama-3.1-8b's shapes at tp4 (on one GPU)
// 1.76 -> 1.54 ms a step together with the 64 MiB weight limit (cuda_backend.cpp), 2.75 -> 2.64 at
// tp2, 4.45 -> 4.32 at tp1 (docs/benchmarks.md). From 4096 to 3072 rows when llama-3.1-8b's tp2 qkv
// (3072 × 4096) was measured in its decode step on 4 × H200: 2.766 -> 2.721 ms a step (one row a warp
// took 12 µs a call alone, 2.1 TB/s); its tp4 qkv (1536 rows) is better off one row a warp (1.714 ms
// against 1.862 with four).
constexpr int64_t kFourRowsMinRows = 3072;
// TROUPE_GEMV_FOUR_ROWS_FROM sets that threshold, to measure.
int64_t four_rows_min_rows() {
  static const int64_t rows = switch_value("TROUPE_GEMV_FOUR_ROWS_FROM", kFourRowsMinRows);
  return rows;
}
constexpr int64_t kMaxStagedBytes = 48 * 1024;

// At one token and k ≤ 1024, four rows per warp, each lane holding its share of all four before the
// wait: a 4096- or 6144-row projection of a small model (qwen3-0.6b's qkv, gate_up) then fits the
// SMs in one wave of blocks that load their whole weight before the wait, in fewer registers per
// weight byte than two rows a warp (a block's 98 registers a thread hold 4 rows, 74 held 2), so the
// next projection's blocks find room beside them sooner. qwen3-0.6b at batch 1 on an H100: 0.827 ms
// a step with two rows, 0.812–0.813 with four (docs/benchmarks.md).
template <int TOKENS, GemvInput IN, Out OUT>
void launch(const Params& p, cudaStream_t stream) {
  if ((TOKENS <= 2 && p.n >= four_rows_min_rows()) || (TOKENS == 1 && p.k <= 32 * kVec * kPrefetch<1, 4>)) {
    if constexpr (TOKENS == 1) {
      // 1024 < k ≤ 2048: the four whole rows before the wait (kPrefetchOf). On 4 × H200,
      // llama-3.1-8b's batch-1 step at tp2 (its 4096 × 2048 o shard): 2.729 / 2.731 ms with four
      // vectors a row, 2.683 / 2.685 with the whole rows. TROUPE_GEMV_LONG4=0 keeps the four vectors,
      // to measure.
      static const bool long4 = switched_on("TROUPE_GEMV_LONG4");
      if (long4 && p.k > 32 * kVec * kPrefetch<1, 4> && p.k <= 32 * kVec * 8)
        return launch_rows<1, 4, IN, OUT, true>(p, stream);
    }
    launch_rows<TOKENS, 4, IN, OUT>(p, stream);
    return;
  }
  if constexpr (TOKENS == 1) {
    if (p.k > 32 * kVec * kPrefetch<1, 1> && p.k <= 32 * kVec * 16) {
      launch_rows<1, 1, IN, OUT, true>(p, stream);
      return;
    }
  }
  launch_rows<TOKENS, 1, IN, OUT>(p, stream);
}

template <GemvInput IN, Out OUT>
void dispatch(const Params& p, int64_t tokens, cudaStream_t stream) {
  switch (tokens) {
    case 1: return launch<1, IN, OUT>(p, stream);
    case 2: return launch<2, IN, OUT>(p, stream);
    case 3: return launch<3, IN, OUT>(p, stream);
    case 4: return launch<4, IN, OUT>(p, stream);
    case 5: return launch<5, IN, OUT>(p, stream);
    case 6: return launch<6, IN, OUT>(p, stream);
    case 7: return launch<7, IN, OUT>(p, stream);
    case 8: return launch<8, IN, OUT>(p, stream);
  }
}

// The output ends each input takes (a normed projection starts a sublayer: it never pushes).
template <GemvInput IN>
void dispatch_out(const Params& p, int64_t tokens, Out out, cudaStream_t stream) {
  if (out == Out::add) return dispatch<IN, Out::add>(p, tokens, stream);
  if constexpr (IN != GemvInput::rms_norm)
    if (out == Out::push) return dispatch<IN, Out::push>(p, tokens, stream);
  dispatch<IN, Out::store>(p, tokens, stream);
}

}  // namespace

bool small_batch_gemv(const GemvCall& c, cudaStream_t stream) {
  if (c.tokens < 1 || c.tokens > kGemvMaxTokens || c.n < 1 || c.k < kVec || c.k % kVec != 0 || !is_aligned(c.x, 16) ||
      !is_aligned(c.w, 16))
    return false;
  // A computed input must fit the shared memory a block gets without opting in.
  if (c.input != GemvInput::plain && c.tokens * c.k * static_cast<int64_t>(sizeof(bf16)) > kMaxStagedBytes) return false;
  if (c.input == GemvInput::rms_norm && (c.norm_weight == nullptr || !is_aligned(c.norm_weight, 16))) return false;
  // A pushed all-reduce's sending end: on the inputs that end a sublayer, into slots that hold the output.
  if (c.push && (c.add_to_out || c.input == GemvInput::rms_norm ||
                 c.push->slot_bytes < static_cast<size_t>(2 * c.tokens * c.n)))
    return false;
  static_assert(4 * kGemvMaxTokens <= 32, "one lane writes each of a warp's outputs");
  static_assert(kRmsMaxThreads % kThreads == 0);
  static const bool prefetch_norm = switched_on("TROUPE_NORM_PREFETCH");
  Params p{c.x, c.w, c.bias, c.out, c.norm_weight, c.eps, c.n, c.k, block_threads(c.k / kVec, kRmsMaxThreads), {},
           prefetch_norm};
  if (c.push) p.ar = *c.push;
  const Out out = c.add_to_out ? Out::add : c.push ? Out::push : Out::store;
  if (c.stream && stream_gemv_takes(c.tokens, c.n, c.k, c.input)) {
    launch_stream_gemv(p, c.input, out, stream);
    return true;
  }
  switch (c.input) {
    case GemvInput::plain: dispatch_out<GemvInput::plain>(p, c.tokens, out, stream); break;
    case GemvInput::staged:  // one token's store (a norm's output); else read plain, the same values
      if (c.tokens == 1 && out == Out::store)
        launch<1, GemvInput::staged, Out::store>(p, stream);
      else
        dispatch_out<GemvInput::plain>(p, c.tokens, out, stream);
      break;
    case GemvInput::rms_norm: dispatch_out<GemvInput::rms_norm>(p, c.tokens, out, stream); break;
    case GemvInput::silu_mul: dispatch_out<GemvInput::silu_mul>(p, c.tokens, out, stream); break;
  }
  return true;
}

bool small_batch_linear(const bf16* x, const bf16* w, const bf16* bias, bf16* out, int64_t tokens, int64_t n, int64_t k,
                        cudaStream_t stream) {
  GemvCall c;
  c.x = x, c.w = w, c.bias = bias, c.out = out, c.tokens = tokens, c.n = n, c.k = k;
  return small_batch_gemv(c, stream);
}

}  // namespace troupe::cuda
