// Prefill attention (FlashAttention-2 style) over the paged KV cache: prompts, chunked prefill,
// prefix-cache hits and batches that mix them with decode tokens, in one launch.
//
// The keys of a sequence are all in the cache (this step's were written by rope_store_kv), so a query
// tile reads K/V tiles through the block table exactly as decode does. A CTA takes 64 query rows of one
// sequence and one kv head, where a row is a (token, query head of the group) pair, token-major: the
// group's heads share every K/V tile that the CTA loads (GQA), and a tile spans few tokens, so little of
// the causal triangle is computed only to be masked. Each of the four warps owns 16 rows and runs the
// online softmax over every key tile up to its last row's causal limit; the grid is
// (query tiles of the longest sequence, kv heads, sequences), and tiles past a shorter sequence's end
// exit at once.
#include <algorithm>
#include <bit>
#include <atomic>
#include <stdexcept>

#include "kernels/attention_tiles.cuh"

namespace troupe::cuda::attn {
namespace {

constexpr int kRows = kWarps * 16;  // query rows per CTA

struct PrefillParams {
  const bf16* qkv;
  bf16* out;
  const bf16* k_cache;
  const bf16* v_cache;
  const int32_t* query_start;
  const int32_t* context_lens;
  const int32_t* block_tables;
  int64_t qkv_stride;
  int64_t out_stride;
  int max_blocks_per_seq;
  int block_size;
  int block_shift;  // log2(block_size), or -1 when it is not a power of two
  int num_kv_heads;
  int group;
  float scale_log2;
};

template <int D>
constexpr int prefill_smem_bytes = (kRows + kStages * 2 * kTileKeys) * kRow<D> * static_cast<int>(sizeof(bf16));

template <int D>
__global__ void __launch_bounds__(kThreads) flash_prefill_kernel(const PrefillParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* const qs = reinterpret_cast<bf16*>(smem);
  bf16* const stages = qs + kRows * kRow<D>;

  const int kv_head = blockIdx.y, seq = blockIdx.z;
  const int q0 = p.query_start[seq];
  const int qn = p.query_start[seq + 1] - q0;
  const int total_rows = qn * p.group;
  const int row0 = blockIdx.x * kRows;
  if (row0 >= total_rows) return;
  const int ctx = p.context_lens[seq];
  const int past = ctx - qn;  // keys before this step's first token; token i sees keys 0..past + i
  const int warp = threadIdx.x / warp_size, lane = threadIdx.x % warp_size;

  load_q_tile<D, kRows>(
      qs,
      [&](int r) -> const bf16* {
        const int row = row0 + r;
        if (row >= total_rows) return nullptr;
        const int i = row / p.group, g = row - i * p.group;
        return p.qkv + (q0 + i) * p.qkv_stride + static_cast<int64_t>(kv_head * p.group + g) * D;
      },
      p.qkv);
  cp_async_commit();

  // Keys that some row of this CTA sees: up to the causal limit of its last token.
  const int kv_end = past + min(qn - 1, (row0 + kRows - 1) / p.group) + 1;
  const KvSource src{p.k_cache, p.v_cache, p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq,
                     p.block_size, p.block_shift, static_cast<int64_t>(p.num_kv_heads) * D,
                     static_cast<int64_t>(kv_head) * D};
  const int n_tiles = (kv_end + kTileKeys - 1) / kTileKeys;
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < n_tiles)
      load_kv_tile<D>(stages + 2 * st * tile_elems<D>, stages + (2 * st + 1) * tile_elems<D>, src, st * kTileKeys,
                      kv_end);
    cp_async_commit();
  }
  cp_async_wait<kStages - 1>();
  __syncthreads();
  uint32_t qf[D / 16][4];
  load_q_fragments<D>(qf, qs + warp * 16 * kRow<D>, lane);

  // This warp's rows: a padding row (past the sequence's last) takes the last token's limit, which
  // keeps its softmax finite; it is never stored.
  const int wrow0 = row0 + warp * 16;
  const bool warp_live = wrow0 < total_rows;
  const int quad_row = lane >> 2, quad = lane & 3;
  int lim[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) lim[i] = past + min(qn - 1, (wrow0 + quad_row + 8 * i) / p.group);
  const int warp_first = past + min(qn - 1, wrow0 / p.group);      // smallest limit among the rows
  const int warp_last = past + min(qn - 1, (wrow0 + 15) / p.group);  // largest

  WarpAccum<D> acc;
  acc.init();
  for (int t = 0; t < n_tiles; ++t) {
    const int ahead = t + kStages - 1;
    if (ahead < n_tiles) {
      const int st = ahead % kStages;
      load_kv_tile<D>(stages + 2 * st * tile_elems<D>, stages + (2 * st + 1) * tile_elems<D>, src,
                      ahead * kTileKeys, kv_end);
    }
    cp_async_commit();
    cp_async_wait<kStages - 1>();
    __syncthreads();
    const int key0 = t * kTileKeys;
    if (warp_live && key0 <= warp_last) {
      const int st = t % kStages;
      attend<D, kTileKeys>(acc, qf, stages + 2 * st * tile_elems<D>, stages + (2 * st + 1) * tile_elems<D>, key0, lim,
                           key0 + kTileKeys - 1 > warp_first, p.scale_log2, lane);
    }
    __syncthreads();
  }
  cp_async_wait<0>();
  if (!warp_live) return;
  acc.finish_sums();

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = wrow0 + quad_row + 8 * i;
    if (row >= total_rows) continue;
    const int tok = row / p.group, g = row - tok * p.group;
    bf16* dst = p.out + (q0 + tok) * p.out_stride + static_cast<int64_t>(kv_head * p.group + g) * D + quad * 2;
    const float inv = acc.l[i] > 0.0f ? 1.0f / acc.l[i] : 0.0f;
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
      *reinterpret_cast<uint32_t*>(dst + j * 8) = pack_bf16(acc.o[j][2 * i] * inv, acc.o[j][2 * i + 1] * inv);
  }
}

template <int D>
void launch(const AttentionArgs& a, cudaStream_t stream) {
  PrefillParams p{};
  p.qkv = a.qkv;
  p.out = a.out;
  p.k_cache = a.k_cache;
  p.v_cache = a.v_cache;
  p.query_start = a.query_start;
  p.context_lens = a.context_lens;
  p.block_tables = a.block_tables;
  p.qkv_stride = static_cast<int64_t>(a.num_heads + 2 * a.num_kv_heads) * D;
  p.out_stride = static_cast<int64_t>(a.num_heads) * D;
  p.max_blocks_per_seq = a.max_blocks_per_seq;
  p.block_size = a.block_size;
  p.block_shift = (a.block_size & (a.block_size - 1)) == 0 ? std::countr_zero(static_cast<unsigned>(a.block_size)) : -1;
  p.num_kv_heads = a.num_kv_heads;
  p.group = a.num_heads / a.num_kv_heads;
  p.scale_log2 = a.scale * kLog2e;

  const int64_t row_tiles = (static_cast<int64_t>(a.max_query_len) * p.group + kRows - 1) / kRows;
  if (row_tiles > 0x7fffffff || a.num_kv_heads > 65535)
    throw std::invalid_argument("flash_prefill: grid too large");
  constexpr int smem = prefill_smem_bytes<D>;
  static std::atomic<uint64_t> granted{0};
  allow_shared_memory(reinterpret_cast<const void*>(&flash_prefill_kernel<D>), smem, granted);
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(a.num_kv_heads),
                  static_cast<unsigned>(a.num_seqs));
  flash_prefill_kernel<D><<<grid, kThreads, smem, stream>>>(p);
  TROUPE_CUDA_CHECK_LAUNCH(flash_prefill_kernel);
}

}  // namespace

void flash_prefill(const AttentionArgs& a, cudaStream_t stream) {
  switch (a.head_dim) {
    case 16: return launch<16>(a, stream);
    case 32: return launch<32>(a, stream);
    case 64: return launch<64>(a, stream);
    case 128: return launch<128>(a, stream);
    default: throw std::invalid_argument("flash_prefill: unsupported head_dim");
  }
}

}  // namespace troupe::cuda::attn
