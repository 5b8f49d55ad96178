// Decode attention over the paged KV cache: every sequence has one new token.
//
// Decode is memory-bound: each K/V byte of every sequence must be read once per step, and nothing
// else matters much. So one CTA serves all the query heads of one kv head (GQA: the group's q rows
// are the 16 rows of one tensor-core tile), and K/V tiles of 64 keys stream through shared memory
// with cp.async, 16 bytes per instruction, the next tile in flight while this one is used. The four
// warps take 16 keys each of a tile, keep separate online-softmax states, and merge them at the end.
//
// A long context with few sequences would leave most SMs idle, so the context is split (FlashDecoding):
// grid.x CTAs take consecutive ranges of split_keys keys, write unnormalised partial outputs with their
// max and sum to a workspace, and a second kernel combines them.
#include <algorithm>
#include <atomic>
#include <stdexcept>

#include "kernels/attention_tiles.cuh"

namespace troupe::cuda::attn {
namespace {

struct DecodeParams {
  const bf16* qkv;
  bf16* out;
  const bf16* k_cache;
  const bf16* v_cache;
  const int32_t* query_start;
  const int32_t* context_lens;
  const int32_t* block_tables;
  int64_t qkv_stride;  // elements per qkv row
  int64_t out_stride;
  int max_blocks_per_seq;
  int block_size;
  int num_heads;
  int num_kv_heads;
  int group;      // query heads per kv head
  int row_tiles;  // tiles of 16 query heads per kv head
  int split_keys;
  int num_splits;
  float scale_log2;
  float* partial_out;  // [num_seqs, num_heads, num_splits, D], when num_splits > 1
  float* partial_ml;   // [num_seqs, num_heads, num_splits, 2]: max (log2 units) and sum
};

template <int D>
constexpr int decode_smem_bytes = (16 + kStages * 2 * kTileKeys) * kRow<D> * static_cast<int>(sizeof(bf16));

// grid (num_splits, num_kv_heads · row_tiles, num_seqs), kThreads threads.
template <int D>
__global__ void __launch_bounds__(kThreads) paged_decode_kernel(const DecodeParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* const qs = reinterpret_cast<bf16*>(smem);
  bf16* const stages = qs + 16 * kRow<D>;  // stage i: K tile at 2i, V tile at 2i + 1

  const int split = blockIdx.x;
  const int kv_head = blockIdx.y / p.row_tiles, row_tile = blockIdx.y % p.row_tiles;
  const int seq = blockIdx.z;
  const int ctx = p.context_lens[seq];
  const int k_begin = split * p.split_keys;
  if (k_begin >= ctx) return;  // nothing of this sequence here; the combine kernel skips the split
  const int k_end = min(ctx, k_begin + p.split_keys);
  const int token = p.query_start[seq];
  const int g0 = row_tile * 16;
  const int rows = min(16, p.group - g0);
  const int warp = threadIdx.x / warp_size, lane = threadIdx.x % warp_size;

  const bf16* q_row0 = p.qkv + token * p.qkv_stride + static_cast<int64_t>(kv_head * p.group + g0) * D;
  load_q_tile<D, 16>(qs, [&](int r) { return r < rows ? q_row0 + r * D : nullptr; }, p.qkv);
  cp_async_commit();

  const KvSource src{p.k_cache, p.v_cache, p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq,
                     p.block_size, static_cast<int64_t>(p.num_kv_heads) * D, static_cast<int64_t>(kv_head) * D};
  const int n_tiles = (k_end - k_begin + kTileKeys - 1) / kTileKeys;
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < n_tiles)
      load_kv_tile<D>(stages + 2 * st * tile_elems<D>, stages + (2 * st + 1) * tile_elems<D>, src,
                      k_begin + st * kTileKeys, k_end);
    cp_async_commit();
  }
  cp_async_wait<kStages - 1>();  // the q group, committed first, is complete
  __syncthreads();
  uint32_t qf[D / 16][4];
  load_q_fragments<D>(qf, qs, lane);

  WarpAccum<D> acc;
  acc.init();
  const int lim[2] = {k_end - 1, k_end - 1};
  for (int t = 0; t < n_tiles; ++t) {
    const int ahead = t + kStages - 1;
    if (ahead < n_tiles) {
      const int st = ahead % kStages;
      load_kv_tile<D>(stages + 2 * st * tile_elems<D>, stages + (2 * st + 1) * tile_elems<D>, src,
                      k_begin + ahead * kTileKeys, k_end);
    }
    cp_async_commit();  // possibly empty, so that the group count stays in step with t
    cp_async_wait<kStages - 1>();
    __syncthreads();
    const int key0 = k_begin + t * kTileKeys + warp * 16;
    if (key0 < k_end) {
      const int st = t % kStages;
      const bf16* ks = stages + 2 * st * tile_elems<D> + warp * 16 * kRow<D>;
      const bf16* vs = stages + (2 * st + 1) * tile_elems<D> + warp * 16 * kRow<D>;
      attend<D, 16>(acc, qf, ks, vs, key0, lim, key0 + 15 >= k_end, p.scale_log2, lane);
    }
    __syncthreads();  // before the next iteration's load reuses this stage
  }
  acc.finish_sums();

  // Merge the four warps' states through shared memory, which the K/V stages no longer need.
  cp_async_wait<0>();
  float* const red_o = reinterpret_cast<float*>(stages);  // [kWarps][16][D]
  float* const red_m = red_o + kWarps * 16 * D;            // [kWarps][16]
  float* const red_l = red_m + kWarps * 16;
  static_assert((kWarps * 16 * (D + 2)) * sizeof(float) <= 2 * kStages * kTileKeys * kRow<D> * sizeof(bf16));
  const int quad_row = lane >> 2, quad = lane & 3;
  if (quad == 0) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      red_m[warp * 16 + quad_row + 8 * i] = acc.m[i];
      red_l[warp * 16 + quad_row + 8 * i] = acc.l[i];
    }
  }
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e)
      red_o[(warp * 16 + quad_row + 8 * (e >> 1)) * D + j * 8 + quad * 2 + (e & 1)] = acc.o[j][e];
  }
  __syncthreads();

  for (int c = threadIdx.x; c < 16 * (D / 4); c += kThreads) {
    const int row = c / (D / 4), col = (c % (D / 4)) * 4;
    if (row >= rows) continue;
    float m_all = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m_all = fmaxf(m_all, red_m[w * 16 + row]);
    const float base = m_all == -INFINITY ? 0.0f : m_all;
    float l = 0.0f, o[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = fast_exp2(red_m[w * 16 + row] - base);
      l += red_l[w * 16 + row] * f;
      const float4 v = *reinterpret_cast<const float4*>(red_o + (w * 16 + row) * D + col);
      o[0] += v.x * f;
      o[1] += v.y * f;
      o[2] += v.z * f;
      o[3] += v.w * f;
    }
    const int head = kv_head * p.group + g0 + row;
    if (p.num_splits == 1) {
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      const uint2 packed{pack_bf16(o[0] * inv, o[1] * inv), pack_bf16(o[2] * inv, o[3] * inv)};
      *reinterpret_cast<uint2*>(p.out + token * p.out_stride + static_cast<int64_t>(head) * D + col) = packed;
    } else {
      const int64_t part = (static_cast<int64_t>(seq) * p.num_heads + head) * p.num_splits + split;
      *reinterpret_cast<float4*>(p.partial_out + part * D + col) = make_float4(o[0], o[1], o[2], o[3]);
      if (col == 0) *reinterpret_cast<float2*>(p.partial_ml + part * 2) = make_float2(m_all, l);
    }
  }
}

// grid (num_heads, num_seqs), max(D, 32) threads: out = Σ_i o_i 2^(m_i − m) / Σ_i l_i 2^(m_i − m) over
// the splits that hold keys of the sequence.
template <int D>
__global__ void combine_splits_kernel(const DecodeParams p) {
  const int head = blockIdx.x, seq = blockIdx.y;
  const int ctx = p.context_lens[seq];
  const int n = min(p.num_splits, (ctx + p.split_keys - 1) / p.split_keys);
  const int64_t first = (static_cast<int64_t>(seq) * p.num_heads + head) * p.num_splits;
  float m_all = -INFINITY;
  for (int i = 0; i < n; ++i) m_all = fmaxf(m_all, p.partial_ml[(first + i) * 2]);
  const float base = m_all == -INFINITY ? 0.0f : m_all;
  const int token = p.query_start[seq];
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float l = 0.0f, o = 0.0f;
    for (int i = 0; i < n; ++i) {
      const float f = fast_exp2(p.partial_ml[(first + i) * 2] - base);
      l += p.partial_ml[(first + i) * 2 + 1] * f;
      o += p.partial_out[(first + i) * D + d] * f;
    }
    p.out[token * p.out_stride + static_cast<int64_t>(head) * D + d] = __float2bfloat16_rn(l > 0.0f ? o / l : 0.0f);
  }
}

template <int D>
void launch(const AttentionArgs& a, cudaStream_t stream) {
  DecodeParams p{};
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
  p.num_heads = a.num_heads;
  p.num_kv_heads = a.num_kv_heads;
  p.group = a.num_heads / a.num_kv_heads;
  p.row_tiles = (p.group + 15) / 16;
  p.scale_log2 = a.scale * kLog2e;

  // Splits: enough CTAs for every SM to hold a few, never fewer than kMinSplitKeys keys each, and no
  // more partial outputs than the workspace holds.
  const int64_t ctas = static_cast<int64_t>(a.num_seqs) * a.num_kv_heads * p.row_tiles;
  const int64_t target = static_cast<int64_t>(a.sm_count) * kDecodeCtasPerSm;
  const int64_t partial_floats = static_cast<int64_t>(a.num_seqs) * a.num_heads * (D + 2);
  int64_t splits = 1;
  if (ctas < target && a.max_context_len > kMinSplitKeys && a.workspace != nullptr) {
    splits = std::min<int64_t>((target + ctas - 1) / ctas, (a.max_context_len + kMinSplitKeys - 1) / kMinSplitKeys);
    splits = std::min<int64_t>(splits, static_cast<int64_t>(a.workspace_floats) / partial_floats);
  }
  if (splits > 1) {
    const int64_t per_split = (a.max_context_len + splits - 1) / splits;
    p.split_keys = static_cast<int>((per_split + kTileKeys - 1) / kTileKeys * kTileKeys);
    p.num_splits = static_cast<int>((a.max_context_len + p.split_keys - 1) / p.split_keys);
  } else {
    p.split_keys = 1 << 30;  // one split covers any context
    p.num_splits = 1;
  }
  if (p.num_splits > 1) {
    p.partial_out = a.workspace;
    p.partial_ml = a.workspace + partial_floats / (D + 2) * p.num_splits * D;
  }

  constexpr int smem = decode_smem_bytes<D>;
  static std::atomic<uint64_t> granted{0};
  allow_shared_memory(reinterpret_cast<const void*>(&paged_decode_kernel<D>), smem, granted);
  const dim3 grid(static_cast<unsigned>(p.num_splits), static_cast<unsigned>(a.num_kv_heads * p.row_tiles),
                  static_cast<unsigned>(a.num_seqs));
  paged_decode_kernel<D><<<grid, kThreads, smem, stream>>>(p);
  TROUPE_CUDA_CHECK_LAUNCH(paged_decode_kernel);
  if (p.num_splits > 1) {
    combine_splits_kernel<D><<<dim3(static_cast<unsigned>(a.num_heads), static_cast<unsigned>(a.num_seqs)),
                               std::max(D, warp_size), 0, stream>>>(p);
    TROUPE_CUDA_CHECK_LAUNCH(combine_splits_kernel);
  }
}

}  // namespace

void paged_decode(const AttentionArgs& a, cudaStream_t stream) {
  switch (a.head_dim) {
    case 16: return launch<16>(a, stream);
    case 32: return launch<32>(a, stream);
    case 64: return launch<64>(a, stream);
    case 128: return launch<128>(a, stream);
    default: throw std::invalid_argument("paged_decode: unsupported head_dim");
  }
}

}  // namespace troupe::cuda::attn
