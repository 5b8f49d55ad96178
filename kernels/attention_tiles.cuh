// Building blocks that the decode (paged_decode.cu) and prefill (flash_prefill.cu) attention kernels
// share: cp.async loads of K/V tiles through the block table into shared memory, and one warp's
// flash-attention step on tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulate) with an online
// softmax. Included by those two .cu files only.
//
// Layout of a warp's work: 16 query rows (the A operand, kept in registers for the whole kernel)
// against kKeys keys held in shared memory as row-major [key][head_dim] tiles. S = Q·Kᵀ reads K with
// ldmatrix (K rows are exactly the "col" B operand); P·V reads V with ldmatrix.trans; P goes from the
// S accumulators to A fragments without touching shared memory (FlashAttention-2's register reuse).
#pragma once

#include <atomic>
#include <cstdint>

#include "kernels/attention.cuh"
#include "kernels/common.cuh"

namespace troupe::cuda::attn {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * warp_size;
constexpr int kTileKeys = 64;  // keys per shared-memory stage
constexpr int kStages = 2;     // prefill's stages: the next tile loads while this one is used
// The decode path's workspace holds partial outputs of this many CTAs per SM (of 16 query rows each);
// its splits stay well below (about two waves of three to six resident CTAs per SM).
constexpr int kWorkspaceCtasPerSm = 8;
// Fewest keys worth a split of their own. Splits depend on how many sequences share the step, and
// with them the order of the softmax sums, so a context longer than this is not batch-invariant (bf16
// rounding; the layouts and decode-graph tests hold other layouts and graphs to a near-tie rule).
// From one tile (64), with the splits combined by the last CTA of each group, qwen3-0.6b's batch-1
// step with a 256-token context was 5% shorter on an H100, but the layouts test's tiny MoE model
// (prompts and outputs under 256 tokens) then left tp1's path in dp2+ep at a gap of 0.33, past the
// MoE rule's 0.3: short contexts stay whole, so that they are batch-invariant.
constexpr int kMinSplitKeys = 256;
// Split counters (one per sequence × kv head × row tile of a split launch) per SM, at the end of the
// workspace: splits are only chosen below four waves of at most eight resident CTAs per SM.
constexpr int kSplitCountersPerSm = 32;
constexpr float kLog2e = 1.4426950408889634f;

// A shared-memory row of D bf16 plus 16 bytes: the 8 rows that one ldmatrix (or one quarter-warp of
// cp.async writes) touches then start in 8 different 16-byte bank groups, for every D in 16..128.
template <int D>
constexpr int kRow = D + 8;

template <int D>
constexpr int tile_elems = kTileKeys * kRow<D>;

// 16 bytes global → shared, bypassing L1 (every byte is used once). With fill == false nothing is
// read and the destination is zeroed: tails past a sequence's end never touch memory outside it.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool fill) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(fill ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// d += a · b for a 16×16 bf16 A (row-major fragments), a 16×8 bf16 B ("col": b0, b1), f32 d.
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// 2^x on the special-function unit; 2^-inf = +0, which is how masked scores vanish.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Where one sequence's keys and values of one kv head live in the paged cache.
struct KvSource {
  const bf16* k;
  const bf16* v;
  const int32_t* table;  // the sequence's row of the block table
  int block_size;
  int block_shift;      // log2(block_size) when it is a power of two, else -1 (then divide)
  int64_t slot_stride;  // elements from one slot to the next: num_kv_heads · head_dim
  int64_t head_offset;  // kv_head · head_dim
};

// The rows of a K/V tile that one thread copies, and their cache slots. Looking a slot up is a
// dependent global load (the block table) before the copy can start, so the decode loop fetches the
// slots of the next tile while the current one is in flight.
template <int D>
struct TileSlots {
  static constexpr int chunks = D / 8;  // 16-byte chunks per row
  static constexpr int count = kTileKeys * chunks / kThreads;
  static_assert(kTileKeys * chunks % kThreads == 0);
  int32_t slot[count];

  __device__ __forceinline__ static int row(int i) { return (static_cast<int>(threadIdx.x) + i * kThreads) / chunks; }
  __device__ __forceinline__ static int col(int i) { return (static_cast<int>(threadIdx.x) + i * kThreads) % chunks * 8; }

  // Slots of this thread's rows of keys [k0, k0 + kTileKeys); rows at or past k_end read nothing.
  __device__ __forceinline__ void fetch(const KvSource& src, int k0, int k_end) {
#pragma unroll
    for (int i = 0; i < count; ++i) {
      const int key = k0 + row(i);
      const int index = src.block_shift >= 0 ? key >> src.block_shift : key / src.block_size;
      slot[i] = key < k_end ? src.table[index] * src.block_size + (key - index * src.block_size) : 0;
    }
  }
};

// Starts the copy of keys [k0, k0 + kTileKeys) into ks and vs (kTileKeys rows of kRow<D>), from the
// slots that `slots` fetched for the same k0; keys at or past k_end are zero-filled without reading
// the cache.
template <int D>
__device__ __forceinline__ void load_kv_tile(bf16* ks, bf16* vs, const KvSource& src, int k0, int k_end,
                                             const TileSlots<D>& slots) {
#pragma unroll
  for (int i = 0; i < TileSlots<D>::count; ++i) {
    const int row = TileSlots<D>::row(i), col = TileSlots<D>::col(i);
    const bool live = k0 + row < k_end;
    const int64_t offset = live ? static_cast<int64_t>(slots.slot[i]) * src.slot_stride + src.head_offset + col : 0;
    cp_async_16(smem_u32(ks + row * kRow<D> + col), src.k + offset, live);
    cp_async_16(smem_u32(vs + row * kRow<D> + col), src.v + offset, live);
  }
}

// The same, looking the blocks up on the spot.
template <int D>
__device__ __forceinline__ void load_kv_tile(bf16* ks, bf16* vs, const KvSource& src, int k0, int k_end) {
  TileSlots<D> slots;
  slots.fetch(src, k0, k_end);
  load_kv_tile<D>(ks, vs, src, k0, k_end, slots);
}

// Starts the copy of a query tile of kRows rows into qs; row_source(r) gives row r's first element in
// global memory, or nullptr for a padding row (zero-filled). `any` is a valid global address for the
// instructions that read nothing.
template <int D, int kRows, class RowSource>
__device__ __forceinline__ void load_q_tile(bf16* qs, RowSource row_source, const bf16* any) {
  constexpr int chunks = D / 8;
  for (int c = static_cast<int>(threadIdx.x); c < kRows * chunks; c += kThreads) {
    const int row = c / chunks, col = (c % chunks) * 8;
    const bf16* p = row_source(row);
    cp_async_16(smem_u32(qs + row * kRow<D> + col), p ? p + col : any, p != nullptr);
  }
}

// The warp's 16 query rows (at qs, kRow<D> apart) as mma A fragments, one set per 16 columns.
template <int D>
__device__ __forceinline__ void load_q_fragments(uint32_t (&qf)[D / 16][4], const bf16* qs, int lane) {
  const int mat = lane >> 3, r = lane & 7;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    ldmatrix_x4(qf[kk], smem_u32(qs + (r + (mat & 1) * 8) * kRow<D> + kk * 16 + (mat >> 1) * 8));
}

// One warp's running state for its 16 rows. A thread holds rows lane/4 ([0]) and lane/4 + 8 ([1]):
// accumulator element o[j][e] is row (e < 2 ? lane/4 : lane/4 + 8), column 8j + 2(lane%4) + e%2.
template <int D>
struct WarpAccum {
  float o[D / 8][4];
  float m[2];  // running max of the scaled scores, in log2 units
  float l[2];  // this thread's part of the running sum; the four threads of a row add theirs at the end

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
  }

  // Full row sums in every thread of the row.
  __device__ __forceinline__ void finish_sums() {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
      l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    }
  }
};

// Attends the warp's 16 rows to kKeys keys (ks, vs: kKeys rows of kRow<D>; key0: absolute index of
// the first). Row i of this thread may see keys up to lim[i]; when `masked` is false every key is
// known to be visible to every row of the warp and the comparisons are skipped.
template <int D, int kKeys>
__device__ __forceinline__ void attend(WarpAccum<D>& acc, const uint32_t (&qf)[D / 16][4], const bf16* ks,
                                       const bf16* vs, int key0, const int (&lim)[2], bool masked,
                                       float scale_log2, int lane) {
  constexpr int kN = kKeys / 8;  // 8-key accumulator blocks
  const int mat = lane >> 3, r = lane & 7, quad = lane & 3;

  float s[kN][4];
#pragma unroll
  for (int n = 0; n < kN; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int nb = 0; nb < kKeys / 16; ++nb) {
      // Matrices: keys +0..7 × dims +0..7, keys +0..7 × dims +8..15, then the same for keys +8..15.
      uint32_t b[4];
      ldmatrix_x4(b, smem_u32(ks + (nb * 16 + r + (mat >> 1) * 8) * kRow<D> + kk * 16 + (mat & 1) * 8));
      mma_16816(s[2 * nb], qf[kk], b[0], b[1]);
      mma_16816(s[2 * nb + 1], qf[kk], b[2], b[3]);
    }
  }

  float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int n = 0; n < kN; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float v = s[n][e] * scale_log2;
      if (masked && key0 + n * 8 + quad * 2 + (e & 1) > lim[e >> 1]) v = -INFINITY;
      s[n][e] = v;
      tile_max[e >> 1] = fmaxf(tile_max[e >> 1], v);
    }
  }
  float base[2], alpha[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 1));
    tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(0xffffffffu, tile_max[i], 2));
    const float m_new = fmaxf(acc.m[i], tile_max[i]);
    // A row that has seen only masked keys keeps m = -inf; subtracting 0 instead keeps its p at 0
    // rather than NaN (-inf - -inf).
    base[i] = m_new == -INFINITY ? 0.0f : m_new;
    alpha[i] = fast_exp2(acc.m[i] - base[i]);
    acc.m[i] = m_new;
  }
  float sum[2] = {0.0f, 0.0f};
#pragma unroll
  for (int n = 0; n < kN; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[n][e] = fast_exp2(s[n][e] - base[e >> 1]);
      sum[e >> 1] += s[n][e];
    }
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) acc.l[i] = acc.l[i] * alpha[i] + sum[i];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    acc.o[j][0] *= alpha[0];
    acc.o[j][1] *= alpha[0];
    acc.o[j][2] *= alpha[1];
    acc.o[j][3] *= alpha[1];
  }

#pragma unroll
  for (int ks16 = 0; ks16 < kKeys / 16; ++ks16) {
    // P's accumulator blocks 2·ks16 and 2·ks16 + 1 are exactly the A fragment of keys 16·ks16..+15.
    const uint32_t a[4] = {pack_bf16(s[2 * ks16][0], s[2 * ks16][1]), pack_bf16(s[2 * ks16][2], s[2 * ks16][3]),
                           pack_bf16(s[2 * ks16 + 1][0], s[2 * ks16 + 1][1]),
                           pack_bf16(s[2 * ks16 + 1][2], s[2 * ks16 + 1][3])};
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      // Transposed matrices: keys +0..7 × dims +0..7, keys +8..15 × dims +0..7, then dims +8..15.
      uint32_t b[4];
      ldmatrix_x4_trans(b, smem_u32(vs + (ks16 * 16 + r + (mat & 1) * 8) * kRow<D> + dp * 16 + (mat >> 1) * 8));
      mma_16816(acc.o[2 * dp], a, b[0], b[1]);
      mma_16816(acc.o[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

// The two kernels' launchers (attention.cu validated the arguments).
void paged_decode(const AttentionArgs& args, cudaStream_t stream);
void flash_prefill(const AttentionArgs& args, cudaStream_t stream);
// The decode kernel that also does rope_store_kv's work for each sequence's new token
// (kernels/decode_rope.cuh), at the head dimensions paged_decode_rotates names; attention.cu checks
// both ops' arguments and when it applies.
bool paged_decode_rotates(int head_dim);
void paged_decode_with_rope(const AttentionArgs& args, const RopeStoreArgs& rope, cudaStream_t stream);

// Dynamic shared memory beyond 48 KB must be granted per kernel and per device; `granted` (one
// static per kernel) remembers the devices already done, one bit each, so steps skip the driver call.
void allow_shared_memory(const void* kernel, int bytes, std::atomic<uint64_t>& granted);

}  // namespace troupe::cuda::attn
