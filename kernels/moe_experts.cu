// Routed experts: plan → grouped GEMM (gate_up, fused silu·up) → grouped GEMM (down) → combine.
//
// Why this shape:
// - No host round trip. cuBLAS's grouped GEMM takes each group's m on the host, which would need the
//   per-expert token counts copied back every layer (a sync, and no CUDA graph for decode). Here the
//   counts stay on the device: the plan kernel writes row and tile offsets, and GEMM blocks look up
//   their expert there; the grid covers the worst case and surplus blocks exit at once.
// - No gather pass. The permuted activation rows are never materialised: the first GEMM's loader
//   reads row p of its tile from x[row_token[p]].
// - silu·up in the first GEMM's epilogue. Each block loads the gate rows and the up rows of the same
//   intermediate columns side by side in its B tile, so one thread holds gate and up of the same
//   output element in registers. The [rows, 2·inter] intermediate never reaches memory.
// - Deterministic combine. Each permuted row's result is computed independently of the other rows
//   (fixed k order inside a tile), and each token sums its own slots in slot order: no atomics.
//
// Measured on an H200, Qwen3-30B-A3B's layer (128 experts, top 8, hidden 2048, inter 768): decode
// batches of 8 to 64 tokens run within 1.1-1.2× of reading the touched weights once (0.16 ms at 8,
// 0.33 ms at 64); one token takes 42 µs against an 18 µs floor (four launches); prefill reaches about
// 170 TFLOP/s (1.8 ms for 4096 tokens, 4.7× the tensor-core floor): mma.sync with 64×128 tiles, where
// wgmma and larger tiles are the next step.
#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/common.cuh"
#include "kernels/device_scratch.hpp"
#include "kernels/moe_experts.cuh"

namespace troupe::cuda {
namespace {

int64_t round_up8(int64_t v) { return (v + 7) / 8 * 8; }

// ---- plan --------------------------------------------------------------------------------------------

constexpr int plan_threads = 1024;
constexpr int plan_warps = plan_threads / warp_size;

// Exclusive prefix of (rows, tiles) pairs over the block; every thread gets its prefix and the block
// total. Uses `partial` (32 entries) and leaves it free for the next call.
__device__ int2 block_exclusive_scan(int2 v, int2& total, int2* partial) {
  const int lane = threadIdx.x % warp_size, warp = threadIdx.x / warp_size;
  int2 inclusive = v;
#pragma unroll
  for (int offset = 1; offset < warp_size; offset *= 2) {
    const int x = __shfl_up_sync(0xffffffffu, inclusive.x, offset);
    const int y = __shfl_up_sync(0xffffffffu, inclusive.y, offset);
    if (lane >= offset) {
      inclusive.x += x;
      inclusive.y += y;
    }
  }
  if (lane == warp_size - 1) partial[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x / warp_size;
    int2 w = lane < warps ? partial[lane] : make_int2(0, 0);
#pragma unroll
    for (int offset = 1; offset < warp_size; offset *= 2) {
      const int x = __shfl_up_sync(0xffffffffu, w.x, offset);
      const int y = __shfl_up_sync(0xffffffffu, w.y, offset);
      if (lane >= offset) {
        w.x += x;
        w.y += y;
      }
    }
    if (lane < warps) partial[lane] = w;
  }
  __syncthreads();
  const int2 before = warp > 0 ? partial[warp - 1] : make_int2(0, 0);
  total = partial[blockDim.x / warp_size - 1];
  __syncthreads();
  return make_int2(before.x + inclusive.x - v.x, before.y + inclusive.y - v.y);
}

// One block. Slot a = t·top_k + j of a local expert e gets permuted row p (dest[a] = p, row_token[p]
// = t); rows of one expert are contiguous, [row_offsets[e], row_offsets[e + 1]), and in slot order:
// warp w ranks the slots of its own contiguous segment (match_any groups equal experts in a 32-slot
// step), and the per-warp counts, scanned expert-major, give each warp's first row per expert. The
// order only fixes where a row lives; the result would not depend on it.
__global__ void __launch_bounds__(plan_threads)
    moe_plan_kernel(const int32_t* __restrict__ ids, int32_t assignments, int top_k, int experts, int expert_begin,
                    int tile_m, int32_t* __restrict__ row_offsets, int32_t* __restrict__ tile_offsets,
                    int32_t* __restrict__ dest, int32_t* __restrict__ row_token) {
  extern __shared__ int32_t plan_smem[];
  int32_t* warp_count = plan_smem;                  // [plan_warps][experts]: counts, then first rows
  int32_t* expert_row = plan_smem + plan_warps * experts;  // [experts]: counts, then first rows
  __shared__ int2 partial[plan_warps];

  const int lane = threadIdx.x % warp_size, warp = threadIdx.x / warp_size;
  for (int i = threadIdx.x; i < plan_warps * experts; i += blockDim.x) warp_count[i] = 0;
  __syncthreads();

  const int32_t segment = (assignments + plan_warps - 1) / plan_warps;
  const int32_t begin = warp * segment;
  const int32_t end = min(assignments, begin + segment);
  auto local_expert = [&](int32_t a) {
    if (a >= end) return -1;
    const int32_t e = ids[a] - expert_begin;
    return (e >= 0 && e < experts) ? e : -1;
  };

  for (int32_t step = begin; step < end; step += warp_size) {
    const int e = local_expert(step + lane);
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    if (e >= 0 && lane == __ffs(peers) - 1) warp_count[warp * experts + e] += __popc(peers);
    __syncwarp();
  }
  __syncthreads();

  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    int32_t sum = 0;
    // Not unrolled: nvcc 13.0 miscompiled an unrolled loop over shared-memory partials in
    // kernels/sampling.cu (see there); this one is 32 steps per expert and not worth the risk.
#pragma unroll 1
    for (int w = 0; w < plan_warps; ++w) {
      const int32_t c = warp_count[w * experts + e];
      warp_count[w * experts + e] = sum;
      sum += c;
    }
    expert_row[e] = sum;
  }
  __syncthreads();

  int2 carry = make_int2(0, 0);
  for (int e0 = 0; e0 < experts; e0 += blockDim.x) {
    const int e = e0 + threadIdx.x;
    const int32_t count = e < experts ? expert_row[e] : 0;
    int2 total;
    const int2 before = block_exclusive_scan(make_int2(count, (count + tile_m - 1) / tile_m), total, partial);
    if (e < experts) {
      expert_row[e] = carry.x + before.x;
      row_offsets[e] = carry.x + before.x;
      tile_offsets[e] = carry.y + before.y;
    }
    carry.x += total.x;
    carry.y += total.y;
  }
  if (threadIdx.x == 0) {
    row_offsets[experts] = carry.x;
    tile_offsets[experts] = carry.y;
  }
  __syncthreads();

  for (int32_t step = begin; step < end; step += warp_size) {
    const int32_t a = step + lane;
    const int e = local_expert(a);
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    if (e >= 0) {
      const int32_t p = expert_row[e] + warp_count[warp * experts + e] + __popc(peers & ((1u << lane) - 1u));
      dest[a] = p;
      row_token[p] = a / top_k;
    } else if (a < end) {
      dest[a] = -1;
    }
    __syncwarp();
    if (e >= 0 && lane == __ffs(peers) - 1) warp_count[warp * experts + e] += __popc(peers);
    __syncwarp();
  }
}

// ---- grouped GEMM ------------------------------------------------------------------------------------
//
// C[p, n] = Σ_k A[p, k] · B_e[n, k] for the rows p of each expert e, both operands K-contiguous (the
// "TN" layout mma.sync's row.col form takes directly). m16n8k16 bf16 MMAs fed by ldmatrix from a
// cp.async pipeline of Stages tiles. Shared-memory rows are padded by 16 bytes so that the eight row
// addresses of one ldmatrix fall into eight different bank groups.

template <int BM_, int BN_, int BK_, int WarpsM, int WarpsN, int Stages_>
struct TileConfig {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, warps_n = WarpsN, stages = Stages_;
  static constexpr int threads = WarpsM * WarpsN * warp_size;
  static constexpr int WM = BM / WarpsM, WN = BN / WarpsN;
  static constexpr int MT = WM / 16, NT = WN / 8;
  static constexpr int lds = BK + 8;  // padded shared-memory row, in elements
  static constexpr int chunks_per_row = BK / 8;
  static constexpr int a_iters = BM * chunks_per_row / threads;
  static constexpr int b_iters = BN * chunks_per_row / threads;
  static constexpr std::size_t smem_bytes = static_cast<std::size_t>(Stages_) * (BM + BN) * lds * sizeof(bf16);
  static_assert(WM % 16 == 0 && WN % 16 == 0 && BK % 16 == 0, "warp tiles are whole 16×16 MMA steps");
  static_assert(BM * chunks_per_row % threads == 0 && BN * chunks_per_row % threads == 0, "even loader split");
  // The fused silu·up epilogue pairs n-tile i with n-tile i + NT/2 of the same warp.
  static_assert((WN / 2) % 8 == 0, "gate and up halves of a warp tile must be whole n8 tiles");
  static_assert(smem_bytes <= 48 * 1024, "stays under the default dynamic shared-memory limit");
};

// Many rows per expert (prefill): 64×128 tiles, 4 warps of 32×64.
using LargeTiles = TileConfig<64, 128, 32, 2, 2, 3>;
// A few rows per expert (decode): the GEMM streams weights, so thin 16-row tiles, narrow 64-column
// blocks for more of them in flight, and a deeper pipeline of longer k steps.
using SmallTiles = TileConfig<16, 64, 64, 1, 4, 4>;

struct GemmArgs {
  const bf16* a;            // activations, rows of lda elements
  int64_t lda;
  const int32_t* a_rows;    // gather: the row of a that permuted row p reads; null: row p itself
  const bf16* b;            // expert weights [experts, b_rows, k]
  int64_t b_rows;
  int k;
  bf16* c;                  // output rows (permuted), ldc elements apart
  int64_t ldc;
  int n_out;                // output columns: inter (silu·up) or hidden (down)
  const int32_t* row_offsets;
  const int32_t* tile_offsets;
  int experts;
};

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool fill) {
  const unsigned dst = smem_u32(smem);
  const int bytes = fill ? 16 : 0;  // 0: write zeros, read nothing
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const bf16* smem) {
  const unsigned addr = smem_u32(smem);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Eight elements of one row into shared memory, element by element: the path for a k or a pointer
// that 16-byte copies cannot take. Zeros past k or for a row outside the tile.
__device__ __forceinline__ void load8_scalar(bf16* smem, const bf16* gmem, bool row_ok, int k_left) {
  __align__(16) bf16 v[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = (row_ok && j < k_left) ? gmem[j] : __float2bfloat16_rn(0.0f);
  *reinterpret_cast<uint4*>(smem) = *reinterpret_cast<const uint4*>(v);
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ void store_pair(bf16* c, int64_t ldc, int row, int col, int n_out, float v0, float v1) {
  bf16* dst = c + static_cast<int64_t>(row) * ldc + col;
  if (col + 1 < n_out) {
    *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(v0, v1);
  } else if (col < n_out) {
    *dst = __float2bfloat16_rn(v0);
  }
}

// kGlu: b holds gate rows [0, n_out) then up rows [n_out, 2·n_out); the block computes output columns
// [blockIdx.y·BN/2, +BN/2) as silu(gate)·up. Otherwise output columns [blockIdx.y·BN, +BN) of b's rows.
// kAligned: k % 8 == 0, lda % 8 == 0 and 16-byte aligned a and b, so every row chunk is one cp.async.
template <class Cfg, bool kGlu, bool kGather, bool kAligned>
__global__ void __launch_bounds__(Cfg::threads) grouped_gemm_kernel(const GemmArgs p) {
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, lds = Cfg::lds, stages = Cfg::stages;
  constexpr int WM = Cfg::WM, WN = Cfg::WN, MT = Cfg::MT, NT = Cfg::NT, cpr = Cfg::chunks_per_row;
  extern __shared__ __align__(16) unsigned char gemm_smem[];
  bf16* sa = reinterpret_cast<bf16*>(gemm_smem);
  bf16* sb = sa + stages * BM * lds;

  const int tile = blockIdx.x;
  if (tile >= p.tile_offsets[p.experts]) return;  // a tile the worst case needed and this routing did not
  // The expert whose tiles contain `tile`: the last e with tile_offsets[e] ≤ tile (experts without
  // rows have no tiles and are skipped over by the ≤).
  int lo = 0, hi = p.experts;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (p.tile_offsets[mid] <= tile) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const int e = lo;
  const int m0 = p.row_offsets[e] + (tile - p.tile_offsets[e]) * BM;
  const int m_end = p.row_offsets[e + 1];
  const bf16* b_expert = p.b + static_cast<int64_t>(e) * p.b_rows * p.k;

  const int tid = threadIdx.x, lane = tid % warp_size, warp = tid / warp_size;
  const int wm = warp / Cfg::warps_n, wn = warp % Cfg::warps_n;

  // Source rows of this thread's loader chunks, fixed for the whole k loop.
  const bf16* a_src[Cfg::a_iters];
  bool a_ok[Cfg::a_iters];
  int a_smem[Cfg::a_iters], a_k[Cfg::a_iters];
#pragma unroll
  for (int it = 0; it < Cfg::a_iters; ++it) {
    const int chunk = tid + it * Cfg::threads;
    const int r = chunk / cpr, kc = chunk % cpr;
    const int m = m0 + r;
    a_ok[it] = m < m_end;
    const int64_t row = !a_ok[it] ? 0 : (kGather ? p.a_rows[m] : m);
    a_src[it] = p.a + row * p.lda + kc * 8;
    a_smem[it] = r * lds + kc * 8;
    a_k[it] = kc * 8;
  }
  const bf16* b_src[Cfg::b_iters];
  bool b_ok[Cfg::b_iters];
  int b_smem[Cfg::b_iters], b_k[Cfg::b_iters];
#pragma unroll
  for (int it = 0; it < Cfg::b_iters; ++it) {
    const int chunk = tid + it * Cfg::threads;
    const int r = chunk / cpr, kc = chunk % cpr;
    int64_t row;
    if constexpr (kGlu) {
      // Tile row r feeds warp column r / WN; the first half of each warp's rows are gate rows, the
      // second half the up rows of the same output columns.
      constexpr int half = WN / 2;
      const int q = r % WN;
      const int j = blockIdx.y * (BN / 2) + (r / WN) * half + q % half;
      b_ok[it] = j < p.n_out;
      row = q < half ? j : p.n_out + j;
    } else {
      row = static_cast<int64_t>(blockIdx.y) * BN + r;
      b_ok[it] = row < p.n_out;
    }
    if (!b_ok[it]) row = 0;
    b_src[it] = b_expert + row * p.k + kc * 8;
    b_smem[it] = r * lds + kc * 8;
    b_k[it] = kc * 8;
  }

  auto load_stage = [&](int stage, int kt) {
    const int k0 = kt * BK;
    bf16* a_dst = sa + stage * BM * lds;
    bf16* b_dst = sb + stage * BN * lds;
#pragma unroll
    for (int it = 0; it < Cfg::a_iters; ++it) {
      const int k_left = p.k - k0 - a_k[it];
      if constexpr (kAligned) {
        const bool fill = a_ok[it] && k_left > 0;
        cp_async16(a_dst + a_smem[it], fill ? a_src[it] + k0 : p.a, fill);
      } else {
        load8_scalar(a_dst + a_smem[it], a_src[it] + k0, a_ok[it], k_left);
      }
    }
#pragma unroll
    for (int it = 0; it < Cfg::b_iters; ++it) {
      const int k_left = p.k - k0 - b_k[it];
      if constexpr (kAligned) {
        const bool fill = b_ok[it] && k_left > 0;
        cp_async16(b_dst + b_smem[it], fill ? b_src[it] + k0 : p.b, fill);
      } else {
        load8_scalar(b_dst + b_smem[it], b_src[it] + k0, b_ok[it], k_left);
      }
    }
  };

  float acc[MT][NT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;

  const int k_tiles = (p.k + BK - 1) / BK;
#pragma unroll
  for (int s = 0; s < stages - 1; ++s) {
    if (s < k_tiles) load_stage(s, s);
    cp_async_commit();
  }

  for (int kt = 0; kt < k_tiles; ++kt) {
    // Tile kt has landed (at most stages − 2 newer groups pending) and every warp is done with the
    // stage that the next load overwrites (it held tile kt − 1).
    cp_async_wait<stages - 2>();
    __syncthreads();
    const int next = kt + stages - 1;
    if (next < k_tiles) load_stage(next % stages, next);
    cp_async_commit();

    const bf16* a_tile = sa + (kt % stages) * BM * lds;
    const bf16* b_tile = sb + (kt % stages) * BN * lds;
#pragma unroll
    for (int ks = 0; ks < BK / 16; ++ks) {
      uint32_t af[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
        ldmatrix_x4(af[mt], a_tile + (wm * WM + mt * 16 + (lane & 15)) * lds + ks * 16 + (lane >> 4) * 8);
      uint32_t bfr[NT][2];
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t r[4];
        ldmatrix_x4(r, b_tile + (wn * WN + np * 16 + (lane & 7) + (lane >> 4) * 8) * lds + ks * 16 +
                           ((lane >> 3) & 1) * 8);
        bfr[2 * np][0] = r[0];
        bfr[2 * np][1] = r[1];
        bfr[2 * np + 1][0] = r[2];
        bfr[2 * np + 1][1] = r[3];
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma_bf16(acc[mt][nt], af[mt], bfr[nt][0], bfr[nt][1]);
    }
  }
  cp_async_wait<0>();

  // Accumulator (mt, nt, i): row wm·WM + mt·16 + lane/4 (+8 for i ≥ 2), column nt·8 + 2·(lane%4) (+1
  // for odd i) of the warp tile.
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = m0 + wm * WM + mt * 16 + (lane >> 2) + h * 8;
      if (row >= m_end) continue;
      if constexpr (kGlu) {
#pragma unroll
        for (int nt = 0; nt < NT / 2; ++nt) {
          const int col = blockIdx.y * (BN / 2) + wn * (WN / 2) + nt * 8 + 2 * (lane & 3);
          const float* g = &acc[mt][nt][2 * h];
          const float* u = &acc[mt][nt + NT / 2][2 * h];
          store_pair(p.c, p.ldc, row, col, p.n_out, silu(g[0]) * u[0], silu(g[1]) * u[1]);
        }
      } else {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int col = blockIdx.y * BN + wn * WN + nt * 8 + 2 * (lane & 3);
          store_pair(p.c, p.ldc, row, col, p.n_out, acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1]);
        }
      }
    }
  }
}

template <class Cfg, bool kGlu, bool kGather>
void launch_gemm(const GemmArgs& args, bool aligned, int64_t m_tiles, int64_t n_tiles, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(m_tiles), static_cast<unsigned>(n_tiles));
  if (aligned) {
    grouped_gemm_kernel<Cfg, kGlu, kGather, true><<<grid, Cfg::threads, Cfg::smem_bytes, stream>>>(args);
    TROUPE_CUDA_CHECK_LAUNCH(grouped_gemm_kernel);
  } else {
    grouped_gemm_kernel<Cfg, kGlu, kGather, false><<<grid, Cfg::threads, Cfg::smem_bytes, stream>>>(args);
    TROUPE_CUDA_CHECK_LAUNCH(grouped_gemm_kernel);
  }
}

// ---- combine -----------------------------------------------------------------------------------------

template <int kVec>
__global__ void moe_combine_kernel(const bf16* __restrict__ y, int64_t ldy, const int32_t* __restrict__ dest,
                                   const float* __restrict__ weights, int top_k, bf16* __restrict__ out,
                                   int64_t hidden) {
  const int64_t t = blockIdx.x;
  const int32_t* d = dest + t * top_k;
  const float* w = weights + t * top_k;
  bf16* o = out + t * hidden;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * kVec; c < hidden; c += static_cast<int64_t>(blockDim.x) * kVec) {
    float acc[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) acc[i] = 0.0f;
    for (int j = 0; j < top_k; ++j) {  // slot order: the CPU reference's order
      const int32_t row = d[j];
      if (row < 0) continue;
      const float wj = w[j];
      const bf16* src = y + static_cast<int64_t>(row) * ldy + c;
      if constexpr (kVec == 8) {
        const Bf16x8 v = load8(src);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 f = v.get(i);
          acc[2 * i] += wj * f.x;
          acc[2 * i + 1] += wj * f.y;
        }
      } else {
        acc[0] += wj * __bfloat162float(*src);
      }
    }
    if constexpr (kVec == 8) {
      Bf16x8 r;
#pragma unroll
      for (int i = 0; i < 4; ++i) r.set(i, acc[2 * i], acc[2 * i + 1]);
      store8(o + c, r);
    } else {
      o[c] = __float2bfloat16_rn(acc[0]);
    }
  }
}

// ---- host side ---------------------------------------------------------------------------------------

struct Layout {
  int64_t chunk_tokens;
  int64_t ld_act;  // row stride of the silu·up rows, a multiple of 8 so that rows stay 16-byte aligned
  int64_t ld_y;
};

Layout layout_of(const MoeExpertsShape& s) {
  Layout l{};
  l.ld_act = round_up8(s.inter);
  l.ld_y = round_up8(s.hidden);
  const int64_t per_token = s.top_k * (2 * static_cast<int64_t>(sizeof(int32_t)) +
                                       static_cast<int64_t>(sizeof(bf16)) * (l.ld_act + l.ld_y));
  l.chunk_tokens = std::clamp<int64_t>(static_cast<int64_t>(s.chunk_bytes) / per_token, 1, s.tokens);
  return l;
}

struct Buffers {
  int32_t* row_offsets;
  int32_t* tile_offsets;
  int32_t* dest;
  int32_t* row_token;
  bf16* act;
  bf16* y;
  std::size_t bytes;
};

Buffers carve(void* base, const MoeExpertsShape& s, const Layout& l) {
  const std::size_t slots = static_cast<std::size_t>(l.chunk_tokens) * s.top_k;
  ScratchCarver carver(base);
  Buffers b{};
  b.row_offsets = carver.take<int32_t>(static_cast<std::size_t>(s.experts) + 1);
  b.tile_offsets = carver.take<int32_t>(static_cast<std::size_t>(s.experts) + 1);
  b.dest = carver.take<int32_t>(slots);
  b.row_token = carver.take<int32_t>(slots);
  b.act = carver.take<bf16>(slots * static_cast<std::size_t>(l.ld_act));
  b.y = carver.take<bf16>(slots * static_cast<std::size_t>(l.ld_y));
  b.bytes = carver.bytes();
  return b;
}

void validate(const MoeExpertsShape& s) {
  if (s.top_k < 1 || s.experts < 1 || s.hidden < 1 || s.inter < 1 || s.tokens < 0)
    throw std::invalid_argument("moe_experts: empty dimension");
  const int64_t int_max = std::numeric_limits<int32_t>::max();
  if (s.tokens * s.top_k > int_max || s.hidden > int_max || s.inter > int_max / 2)
    throw std::invalid_argument("moe_experts: sizes beyond 2^31");
  // The plan kernel keeps per-warp counts of every local expert in shared memory.
  if ((plan_warps + 1) * static_cast<int64_t>(s.experts) * 4 > 200 * 1024)
    throw std::invalid_argument("moe_experts: more than " + std::to_string(200 * 1024 / 4 / (plan_warps + 1)) +
                                " local experts");
}

// Upper bound of Σ_e ⌈rows_e / BM⌉ over any routing of `slots` slots to `experts` experts: each
// non-empty expert wastes at most BM − 1 rows of its last tile.
int64_t max_m_tiles(int64_t slots, int experts, int bm) {
  const int64_t busy = std::min<int64_t>(slots, experts);
  return std::max<int64_t>(1, (slots + busy * (bm - 1)) / bm);
}

template <class Cfg>
void run_chunk(const bf16* x, const float* weights, const int32_t* ids, const bf16* gate_up, const bf16* down, bf16* out,
               const MoeExpertsShape& s, const Layout& l, const Buffers& b, int64_t tokens, cudaStream_t stream) {
  const int32_t slots = static_cast<int32_t>(tokens * s.top_k);
  const std::size_t plan_smem = static_cast<std::size_t>(plan_warps + 1) * s.experts * sizeof(int32_t);
  if (plan_smem > 48 * 1024)
    TROUPE_CUDA_CHECK(cudaFuncSetAttribute(moe_plan_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(plan_smem)));
  moe_plan_kernel<<<1, plan_threads, plan_smem, stream>>>(ids, slots, s.top_k, s.experts, s.expert_begin, Cfg::BM,
                                                          b.row_offsets, b.tile_offsets, b.dest, b.row_token);
  TROUPE_CUDA_CHECK_LAUNCH(moe_plan_kernel);

  const int64_t m_tiles = max_m_tiles(slots, s.experts, Cfg::BM);
  GemmArgs first{};
  first.a = x;
  first.lda = s.hidden;
  first.a_rows = b.row_token;
  first.b = gate_up;
  first.b_rows = 2 * s.inter;
  first.k = static_cast<int>(s.hidden);
  first.c = b.act;
  first.ldc = l.ld_act;
  first.n_out = static_cast<int>(s.inter);
  first.row_offsets = b.row_offsets;
  first.tile_offsets = b.tile_offsets;
  first.experts = s.experts;
  const bool first_aligned = s.hidden % 8 == 0 && is_aligned(x, 16) && is_aligned(gate_up, 16);
  launch_gemm<Cfg, true, true>(first, first_aligned, m_tiles, ceil_div(s.inter, Cfg::BN / 2), stream);

  GemmArgs second = first;
  second.a = b.act;
  second.lda = l.ld_act;
  second.a_rows = nullptr;
  second.b = down;
  second.b_rows = s.hidden;
  second.k = static_cast<int>(s.inter);
  second.c = b.y;
  second.ldc = l.ld_y;
  second.n_out = static_cast<int>(s.hidden);
  const bool second_aligned = s.inter % 8 == 0 && is_aligned(down, 16);
  launch_gemm<Cfg, false, false>(second, second_aligned, m_tiles, ceil_div(s.hidden, Cfg::BN), stream);

  const bool vectorised = s.hidden % 8 == 0 && is_aligned(out, 16);
  const unsigned grid = static_cast<unsigned>(tokens);
  if (vectorised) {
    moe_combine_kernel<8><<<grid, block_threads(s.hidden / 8, 256), 0, stream>>>(b.y, l.ld_y, b.dest, weights,
                                                                                  s.top_k, out, s.hidden);
    TROUPE_CUDA_CHECK_LAUNCH(moe_combine_kernel<8>);
  } else {
    moe_combine_kernel<1><<<grid, block_threads(s.hidden, 256), 0, stream>>>(b.y, l.ld_y, b.dest, weights, s.top_k,
                                                                             out, s.hidden);
    TROUPE_CUDA_CHECK_LAUNCH(moe_combine_kernel<1>);
  }
}

}  // namespace

std::size_t moe_experts_scratch_bytes(const MoeExpertsShape& shape) {
  if (shape.tokens == 0) return 0;
  validate(shape);
  return carve(nullptr, shape, layout_of(shape)).bytes;
}

void moe_experts(const bf16* x, const float* topk_weights, const int32_t* topk_ids, const bf16* gate_up,
                 const bf16* down, bf16* out, const MoeExpertsShape& shape, void* scratch, std::size_t scratch_bytes,
                 cudaStream_t stream) {
  if (shape.tokens == 0) return;
  validate(shape);
  const Layout l = layout_of(shape);
  const Buffers b = carve(scratch, shape, l);
  if (scratch_bytes < b.bytes) throw std::invalid_argument("moe_experts: scratch too small");
  for (int64_t t0 = 0; t0 < shape.tokens; t0 += l.chunk_tokens) {
    const int64_t n = std::min(l.chunk_tokens, shape.tokens - t0);
    const int64_t slot0 = t0 * shape.top_k;
    // Thin tiles while the average local expert gets few rows (decode); wide ones for prefill.
    const bool few_rows = n * shape.top_k <= 32 * static_cast<int64_t>(shape.experts);
    if (few_rows) {
      run_chunk<SmallTiles>(x + t0 * shape.hidden, topk_weights + slot0, topk_ids + slot0, gate_up, down,
                            out + t0 * shape.hidden, shape, l, b, n, stream);
    } else {
      run_chunk<LargeTiles>(x + t0 * shape.hidden, topk_weights + slot0, topk_ids + slot0, gate_up, down,
                            out + t0 * shape.hidden, shape, l, b, n, stream);
    }
  }
}

}  // namespace troupe::cuda
