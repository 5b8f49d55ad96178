// Decode attention over the paged KV cache: every sequence has one new token.
//
// Decode is memory-bound: each K/V byte of every sequence must be read once per step, and nothing
// else matters much. So one CTA serves all the query heads of one kv head (GQA: the group's q rows
// are the 16 rows of one tensor-core tile), and K/V tiles of 64 keys stream through shared memory
// with cp.async, 16 bytes per instruction, the next tile in flight while this one is used. The four
// warps take 16 keys each of a tile, keep separate online-softmax states, and merge them at the end.
//
// A step of one sequence (batch-1 decode) splits its context over a thread-block cluster of 8 CTAs
// that combine through distributed shared memory (CLUSTER below): each stores its partial into a slot
// of CTA 0's shared memory and leaves, and CTA 0 merges them (push_combine_bytes).
//
// A long context with few sequences would leave most SMs idle, so the context is split (FlashDecoding):
// grid.x CTAs take consecutive ranges of split_keys keys, write unnormalised partial outputs with their
// max and sum to a workspace, and the last of them to finish (a counter per sequence, kv head and row
// tile) combines them: no second kernel, whose launch and first loads would cost more than the split
// saves on a short context. How many splits: choose_splits.
//
// Measured on an H200 (tools/attention_bench.cu; docs/attention.md): 85-93% of the bandwidth of a
// device-to-device copy from 32 sequences of 4096 keys up, 57-70% for one to eight long sequences.
#include <cooperative_groups.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <stdexcept>

#include "kernels/attention_tiles.cuh"
#include "kernels/decode_rope.cuh"
#include "kernels/mbarrier.cuh"

namespace troupe::cuda::attn {
namespace {

// K/V tiles per CTA in shared memory. A CTA streams at (bytes in flight) / (latency), so deeper
// pipelines let fewer CTAs saturate HBM, but they cost shared memory, hence CTAs per SM: on an H200
// three stages (two CTAs per SM at head_dim 128) ran 3 to 25% slower than two (three CTAs per SM).
// A grid of at most one CTA per SM (decode of a few sequences) has the room for more: with
// kDeepStages, a CTA copies its first kDeepStages − 1 tiles before the wait, and a short context
// is then on chip when rope's kernel ends.
constexpr int kDecodeStages = 2;
constexpr int kDeepStages = 5;

// A step of one sequence splits its context over a cluster of kClusterSplits CTAs
// (paged_decode_kernel's CLUSTER): at batch 1 the cache of a kv head is read by 8 SMs instead of one,
// and the split costs no round trip through global memory. Only one: the cluster's arithmetic (a
// partial per range of tiles, combined in order) differs from a whole CTA's (each warp's keys across
// the context, merged once), so steps of several sequences keep the one path, whose result does not
// depend on which sequences share the step; with up to 4 sequences in clusters, layouts that batch
// differently (dp, pp micro-batches) left tp1's greedy tokens where they had not (4 × H200).
constexpr int kClusterSplits = 8;

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
  int block_shift;  // log2(block_size), or -1 when it is not a power of two
  int num_heads;
  int num_kv_heads;
  int group;      // query heads per kv head
  int row_tiles;  // tiles of 16 query heads per kv head
  int split_keys;
  int num_splits;
  float scale_log2;
  float* partial_out;  // [num_seqs, num_heads, num_splits, D], when num_splits > 1
  float* partial_ml;   // [num_seqs, num_heads, num_splits, 2]: max (log2 units) and sum
  uint32_t* counters;  // [num_seqs, num_kv_heads · row_tiles]: splits finished; zero between launches
  int push_rows;       // CLUSTER: rows of a partial's slot in CTA 0 (push_combine_bytes); 0: combine_cluster
  RopeStoreArgs rope;  // with DecodeRope::rotate or norm_rotate: the rope_store_kv this kernel does
};

// Split partials merged in split order: the running max m (log2 units), the sum l and the
// unnormalised output o (four columns). The one arithmetic of both combines (partials in the
// workspace, or in a cluster's shared memory).
struct SplitMerge {
  float m = -INFINITY, l = 0.0f;
  float4 o{0.0f, 0.0f, 0.0f, 0.0f};
  __device__ __forceinline__ void add(float2 ml, float4 part) {
    if (ml.x == -INFINITY) return;  // a split whose keys were all masked adds nothing
    const float m_new = fmaxf(m, ml.x);
    const float old = fast_exp2(m - m_new), w = fast_exp2(ml.x - m_new);  // 2^-inf = 0 the first time
    l = l * old + ml.y * w;
    o.x = o.x * old + part.x * w, o.y = o.y * old + part.y * w;
    o.z = o.z * old + part.z * w, o.w = o.w * old + part.w * w;
    m = m_new;
  }
};

// o / l as four bf16 at dst (zeros where l is 0: no key was seen).
__device__ __forceinline__ void store_normalised(bf16* dst, float4 o, float l) {
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  const uint2 packed{pack_bf16(o.x * inv, o.y * inv), pack_bf16(o.z * inv, o.w * inv)};
  *reinterpret_cast<uint2*>(dst) = packed;
}

// The last split CTA of a group: out = Σ_i o_i 2^(m_i − m) / Σ_i l_i 2^(m_i − m) over the n splits
// that hold keys of the sequence, for the group's `rows` query heads, in one pass with a running max
// whose loads do not wait on one another (several in flight: this sits on the step's critical path).
// Partials are read past L1 (other CTAs wrote them during this kernel).
template <int D>
__device__ void combine_splits(const DecodeParams& p, int seq, int first_head, int rows, int n, int token) {
  for (int c = threadIdx.x; c < rows * (D / 4); c += kThreads) {
    const int row = c / (D / 4), col = (c % (D / 4)) * 4;
    const int64_t first = (static_cast<int64_t>(seq) * p.num_heads + first_head + row) * p.num_splits;
    const float2* ml = reinterpret_cast<const float2*>(p.partial_ml) + first;
    SplitMerge merge;
#pragma unroll 8
    for (int i = 0; i < n; ++i)
      merge.add(__ldcg(&ml[i]), __ldcg(reinterpret_cast<const float4*>(p.partial_out + (first + i) * D + col)));
    store_normalised(p.out + token * p.out_stride + static_cast<int64_t>(first_head + row) * D + col, merge.o, merge.l);
  }
}

// CLUSTER where CTA 0 has no room for the push combine's slots (a group of 16 heads with five stages),
// or with TROUPE_ATTN_PUSH_COMBINE=0: once every CTA of the cluster has its partial in shared memory,
// CTA r combines the elements r, r + n, … of the group's rows × D / 4 float4 columns, merging the n
// partials in split order (SplitMerge); then all wait again, so that no CTA leaves while another
// still reads its shared memory.
template <int D, int N>
__device__ void combine_cluster(const DecodeParams& p, float* cluster_o, float* cluster_ml, int first_head, int rows,
                                int token) {
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();
  const int rank = static_cast<int>(cluster.block_rank());
  for (int c = rank * kThreads + threadIdx.x; c < rows * (D / 4); c += N * kThreads) {
    const int row = c / (D / 4), col = (c % (D / 4)) * 4;
    // Every partial's loads first, so that the N reads of other SMs' shared memory overlap.
    float2 ml[N];
    float4 part[N];
#pragma unroll
    for (int i = 0; i < N; ++i) {
      ml[i] = *reinterpret_cast<const float2*>(cluster.map_shared_rank(cluster_ml, i) + row * 2);
      part[i] = *reinterpret_cast<const float4*>(cluster.map_shared_rank(cluster_o, i) + row * D + col);
    }
    SplitMerge merge;
#pragma unroll
    for (int i = 0; i < N; ++i) merge.add(ml[i], part[i]);
    store_normalised(p.out + token * p.out_stride + static_cast<int64_t>(first_head + row) * D + col, merge.o, merge.l);
  }
  cluster.sync();
}

// CLUSTER, the combine in CTA 0 (push_rows > 0): after the K/V stages, CTA 0's shared memory holds an
// mbarrier and a slot per CTA of the cluster for its partial ([N][rows][D] outputs, then [N][rows]
// (max, sum) pairs). The other CTAs store their partials into their slots with st.async, which
// completes bytes on that barrier, and leave; CTA 0 waits on it alone and merges in split order, as
// combine_cluster does (the same bits), without the two cluster-wide barriers and the remote reads.
// llama-3.1-8b's batch-1 step on 4 × H200 (context 512, two alternations): tp1 4.242 -> 4.208 ms, tp2
// 2.564 -> 2.543, tp4 1.691 -> 1.665 (docs/benchmarks.md, eleventh session).
template <int D>
constexpr int push_combine_bytes(int rows) {
  return 16 + kClusterSplits * rows * (D + 2) * static_cast<int>(sizeof(float));
}

__device__ __forceinline__ uint32_t cluster_address(uint32_t local, uint32_t rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
  return remote;
}
__device__ __forceinline__ void store_async(uint32_t remote, float4 v, uint32_t remote_bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.f32 [%0], {%1, %2, %3, %4}, [%5];" ::"r"(
                   remote),
               "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w), "r"(remote_bar)
               : "memory");
}
__device__ __forceinline__ void store_async(uint32_t remote, float2 v, uint32_t remote_bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.f32 [%0], {%1, %2}, [%3];" ::"r"(remote),
               "f"(v.x), "f"(v.y), "r"(remote_bar)
               : "memory");
}
// Every thread of every CTA of the cluster arrives once and waits once: here only so that CTA 0's
// barrier is initialised before any other CTA stores to it.
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }

template <int D, int S>
constexpr int decode_smem_bytes = (16 + S * 2 * kTileKeys) * kRow<D> * static_cast<int>(sizeof(bf16));

// Registers are capped so that this many CTAs fit an SM: as many as shared memory allows at head_dim
// 128 and 64 (uncapped, the block-id prefetch would cost one of them), six below; one with deep
// stages.
template <int D, int S>
constexpr int decode_min_ctas = S > kDecodeStages ? 1 : D >= 128 ? 3 : D >= 64 ? 5 : 6;

// grid (num_splits, num_kv_heads · row_tiles, num_seqs), kThreads threads; S stages of K/V tiles.
// CLUSTER: the num_splits CTAs of a (sequence, kv head, row tile) are one thread-block cluster; each
// takes its share of that sequence's own context (whole tiles, ranges that depend on the context
// length alone, not on the max_context_len the launch was sized for), and they combine through each
// other's shared memory, with no counter, fence or partials in global memory.
// R other than none: the kernel rotates q and k itself and writes the new k and v into the cache
// (decode_rope.cuh), where rope_store_kv_kernel would have run before it. Only for launches whose
// query heads of a kv head fit one row tile: then the one CTA that holds a sequence's newest key
// (among those of a kv head) is the one that writes it, and its own later tiles read it back.
template <int D, int S, bool CLUSTER = false, DecodeRope R = DecodeRope::none>
__global__ void __launch_bounds__(kThreads, (decode_min_ctas<D, S>)) paged_decode_kernel(const DecodeParams p) {
  constexpr bool kRope = R != DecodeRope::none;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* const qs = reinterpret_cast<bf16*>(smem);
  bf16* const stages = qs + 16 * kRow<D>;  // stage i: K tile at 2i, V tile at 2i + 1

  const int split = blockIdx.x;
  const int kv_head = blockIdx.y / p.row_tiles, row_tile = blockIdx.y % p.row_tiles;
  const int seq = blockIdx.z;
  // Context lengths and block tables are step inputs, copied in before the step's first kernel.
  const int ctx = p.context_lens[seq];
  // The last split takes whatever remains, so that a context longer than the max_context_len the
  // splits were sized for (a CUDA graph captured at another step's lengths) is still read whole.
  const int split_keys =
      CLUSTER ? (ctx + kTileKeys * p.num_splits - 1) / (kTileKeys * p.num_splits) * kTileKeys : p.split_keys;
  const int k_begin = min(ctx, split * split_keys);
  const int k_end = split == p.num_splits - 1 ? ctx : min(ctx, k_begin + split_keys);
  const KvSource src{p.k_cache, p.v_cache, p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq,
                     p.block_size, p.block_shift, static_cast<int64_t>(p.num_kv_heads) * D,
                     static_cast<int64_t>(kv_head) * D};
  const int n_tiles = (k_end - k_begin + kTileKeys - 1) / kTileKeys;
  // While the kernel before (rope and the cache write of this step's token; with R, the qkv
  // projection) runs, the first S − 1 tiles' keys and values are copied already: all but the newest
  // key (ctx − 1), which that kernel (with R, this one) writes. The block ids of the next tile to load
  // are fetched one tile early, so that a block table lookup never sits between the previous copy and
  // the next.
  TileSlots<D> next;
  const int old_end = min(k_end, ctx - 1);
#pragma unroll
  for (int st = 0; st < S - 1; ++st) {
    if (st < n_tiles) {
      next.fetch(src, k_begin + st * kTileKeys, old_end);
      load_kv_tile<D>(stages + 2 * st * tile_elems<D>, stages + (2 * st + 1) * tile_elems<D>, src,
                      k_begin + st * kTileKeys, old_end, next);
    }
    cp_async_commit();
  }
  if (n_tiles > 0) next.fetch(src, k_begin + (S - 1) * kTileKeys, k_end);
  [[maybe_unused]] NewTokenRope<D, R == DecodeRope::norm_rotate> new_token;
  int rope_token = 0;
  if constexpr (kRope) {
    rope_token = p.query_start[seq];
    new_token.load_constants(p.rope, rope_token);
  }
  // CTA 0's push-combine barrier, initialised while the kernel before still runs.
  [[maybe_unused]] uint64_t* const push_bar = reinterpret_cast<uint64_t*>(smem + decode_smem_bytes<D, S>);
  [[maybe_unused]] float* const push_o = reinterpret_cast<float*>(smem + decode_smem_bytes<D, S> + 16);
  [[maybe_unused]] float* const push_ml = push_o + kClusterSplits * p.push_rows * D;
  if constexpr (CLUSTER) {
    if (p.push_rows > 0) {
      if (split == 0 && threadIdx.x == 0) {
        mbarrier_init(push_bar);
        mbarrier_init_fence();
      }
      cluster_arrive();
    }
  }
  let_next_kernel_start();
  wait_for_previous_kernel();
  // Nothing of this sequence here; the combine counts only splits with keys. A cluster's CTA stays:
  // the others read its (empty) partial.
  if (!CLUSTER && k_begin >= ctx) return;
  const int token = kRope ? rope_token : p.query_start[seq];
  const int g0 = row_tile * 16;
  const int rows = min(16, p.group - g0);
  const int warp = threadIdx.x / warp_size, lane = threadIdx.x % warp_size;
  const bool new_key = k_begin <= ctx - 1 && ctx - 1 < k_end;  // this CTA holds the newest key
  if constexpr (kRope) {
    const bf16* const row = p.qkv + token * p.qkv_stride;
    const bf16* const k_row = row + static_cast<int64_t>(p.num_heads + kv_head) * D;
    new_token.load(row + static_cast<int64_t>(kv_head * p.group + g0) * D, k_row,
                   k_row + static_cast<int64_t>(p.num_kv_heads) * D, rows, new_key);
  }

  // The first tile, its newest row zero-filled, has landed (every thread's part: another thread may
  // copy that row below) before the real row is copied over it.
  cp_async_wait<0>();
  __syncthreads();
  clock_mark(1);
  // With the kernel's own rope, the new k and v go into the newest key's row from registers, and
  // into the cache before the barrier below: a tile that the loop copies later reads them from there.
  bool newest_written = false;
  if constexpr (kRope) {
    const int tile = (ctx - 1 - k_begin) / kTileKeys, row = ctx - 1 - k_begin - tile * kTileKeys;
    newest_written = new_key && tile < S - 1 && new_token.cached();
    bf16* const tile_k = newest_written ? stages + 2 * tile * tile_elems<D> + row * kRow<D> : nullptr;
    new_token.store(p.rope, qs, tile_k, newest_written ? tile_k + tile_elems<D> : nullptr, src.slot_stride,
                    src.head_offset);
  } else {
    const bf16* q_row0 = p.qkv + token * p.qkv_stride + static_cast<int64_t>(kv_head * p.group + g0) * D;
    load_q_tile<D, 16>(qs, [&](int r) { return r < rows ? q_row0 + r * D : nullptr; }, p.qkv);
  }
  // The newest key's row, where it falls in a copied tile (past this split's keys it is masked anyway).
  if (const int tile = (ctx - 1 - k_begin) / kTileKeys; ctx - 1 >= k_begin && tile < S - 1 && !newest_written) {
    const int key = ctx - 1, row = key - k_begin - tile * kTileKeys;
    const int index = src.block_shift >= 0 ? key >> src.block_shift : key / src.block_size;
    const int64_t at = (static_cast<int64_t>(src.table[index]) * src.block_size + (key - index * src.block_size)) *
                           src.slot_stride + src.head_offset;
    bf16* const ks = stages + 2 * tile * tile_elems<D>;
    for (int c = threadIdx.x; c < D / 8; c += kThreads) {
      cp_async_16(smem_u32(ks + row * kRow<D> + c * 8), src.k + at + c * 8, true);
      cp_async_16(smem_u32(ks + tile_elems<D> + row * kRow<D> + c * 8), src.v + at + c * 8, true);
    }
  }
  cp_async_commit();
  cp_async_wait<0>();  // q and the newest row
  __syncthreads();
  clock_mark(2);
  uint32_t qf[D / 16][4];
  load_q_fragments<D>(qf, qs, lane);

  WarpAccum<D> acc;
  acc.init();
  const int lim[2] = {k_end - 1, k_end - 1};
  for (int t = 0; t < n_tiles; ++t) {
    const int ahead = t + S - 1;
    if (ahead < n_tiles) {
      const int st = ahead % S;
      load_kv_tile<D>(stages + 2 * st * tile_elems<D>, stages + (2 * st + 1) * tile_elems<D>, src,
                      k_begin + ahead * kTileKeys, k_end, next);
    }
    cp_async_commit();  // possibly empty, so that the group count stays in step with t
    if (ahead + 1 < n_tiles) next.fetch(src, k_begin + (ahead + 1) * kTileKeys, k_end);
    cp_async_wait<S - 1>();
    __syncthreads();
    const int key0 = k_begin + t * kTileKeys + warp * 16;
    if (key0 < k_end) {
      const int st = t % S;
      const bf16* ks = stages + 2 * st * tile_elems<D> + warp * 16 * kRow<D>;
      const bf16* vs = stages + (2 * st + 1) * tile_elems<D> + warp * 16 * kRow<D>;
      attend<D, 16>(acc, qf, ks, vs, key0, lim, key0 + 15 >= k_end, p.scale_log2, lane);
    }
    __syncthreads();  // before the next iteration's load reuses this stage
  }
  acc.finish_sums();
  clock_mark(3);

  // Merge the four warps' states through shared memory, which the K/V stages no longer need.
  cp_async_wait<0>();
  float* const red_o = reinterpret_cast<float*>(stages);  // [kWarps][16][D]
  float* const red_m = red_o + kWarps * 16 * D;            // [kWarps][16]
  float* const red_l = red_m + kWarps * 16;
  float* const cluster_o = red_l + kWarps * 16;  // CLUSTER: this CTA's partial, [16][D], then [16] (max, sum)
  float* const cluster_ml = cluster_o + 16 * D;
  static_assert(((kWarps + 1) * 16 * (D + 2)) * sizeof(float) <= 2 * S * kTileKeys * kRow<D> * sizeof(bf16));
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
  if constexpr (CLUSTER) {
    if (p.push_rows > 0) cluster_wait();  // CTA 0's barrier is initialised (long since)
  }

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
    if constexpr (CLUSTER) {
      if (p.push_rows > 0) {
        float* const slot_o = push_o + (split * p.push_rows + row) * D + col;
        float* const slot_ml = push_ml + (split * p.push_rows + row) * 2;
        if (split == 0) {
          *reinterpret_cast<float4*>(slot_o) = make_float4(o[0], o[1], o[2], o[3]);
          if (col == 0) *reinterpret_cast<float2*>(slot_ml) = make_float2(m_all, l);
        } else {
          const uint32_t bar = cluster_address(smem_u32(push_bar), 0);
          store_async(cluster_address(smem_u32(slot_o), 0), make_float4(o[0], o[1], o[2], o[3]), bar);
          if (col == 0) store_async(cluster_address(smem_u32(slot_ml), 0), make_float2(m_all, l), bar);
        }
      } else {
        *reinterpret_cast<float4*>(cluster_o + row * D + col) = make_float4(o[0], o[1], o[2], o[3]);
        if (col == 0) *reinterpret_cast<float2*>(cluster_ml + row * 2) = make_float2(m_all, l);
      }
    } else if (p.num_splits == 1) {
      store_normalised(p.out + token * p.out_stride + static_cast<int64_t>(head) * D + col,
                       make_float4(o[0], o[1], o[2], o[3]), l);
    } else {
      const int64_t part = (static_cast<int64_t>(seq) * p.num_heads + head) * p.num_splits + split;
      *reinterpret_cast<float4*>(p.partial_out + part * D + col) = make_float4(o[0], o[1], o[2], o[3]);
      if (col == 0) *reinterpret_cast<float2*>(p.partial_ml + part * 2) = make_float2(m_all, l);
    }
  }
  clock_mark(4);
  if constexpr (CLUSTER) {
    if (p.push_rows > 0) {
      if (split != 0) return;  // its partial is on its way to CTA 0
      if (threadIdx.x == 0)
        mbarrier_expect_bytes(push_bar, static_cast<uint32_t>((kClusterSplits - 1) * rows * (D + 2) * sizeof(float)));
      mbarrier_wait<true>(push_bar, 0);
      __syncthreads();  // this CTA's own partial, stored by its threads above
      for (int c = threadIdx.x; c < rows * (D / 4); c += kThreads) {
        const int row = c / (D / 4), col = (c % (D / 4)) * 4;
        SplitMerge merge;
#pragma unroll
        for (int i = 0; i < kClusterSplits; ++i)
          merge.add(*reinterpret_cast<const float2*>(push_ml + (i * p.push_rows + row) * 2),
                    *reinterpret_cast<const float4*>(push_o + (i * p.push_rows + row) * D + col));
        store_normalised(p.out + token * p.out_stride + static_cast<int64_t>(kv_head * p.group + g0 + row) * D + col,
                         merge.o, merge.l);
      }
      clock_mark(5);
      return;
    }
    combine_cluster<D, kClusterSplits>(p, cluster_o, cluster_ml, kv_head * p.group + g0, rows, token);
    clock_mark(5);
    return;
  }
  if (p.num_splits == 1) return;
  // Publish this split's partials, then take a ticket; the CTA that takes the last one combines.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  const int n = min(p.num_splits, (ctx + p.split_keys - 1) / p.split_keys);  // splits with keys here
  if (threadIdx.x == 0) {
    uint32_t* const counter = p.counters + static_cast<int64_t>(seq) * gridDim.y + blockIdx.y;
    last = atomicAdd(counter, 1u) == static_cast<uint32_t>(n - 1);
    if (last) *counter = 0;  // every split has counted: ready for the next launch
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  combine_splits<D>(p, seq, kv_head * p.group + g0, rows, n, token);
  clock_mark(5);
}

// How many equal ranges of keys to split each context into, when `ctas` CTAs (sequences × kv heads
// × row tiles) would leave resident slots empty. Measured on an H200: a CTA streams K/V at a bounded
// rate (the bytes its stages keep in flight over the latency), so it takes most of the resident
// slots to reach full bandwidth, and a partly filled last wave runs at its CTAs' rate, not at HBM's.
// The estimate per candidate: Σ over waves of keys per CTA × max(1, CTAs in the wave / saturating
// CTAs), plus a CTA's start and the last CTA's combine in key-equivalents; fewer splits win ties.
int64_t choose_splits(int64_t ctas, int64_t slots, int max_context_len, int64_t max_splits) {
  if (ctas >= 4 * slots || max_splits <= 1) return 1;  // a partial last wave is a small part of 4 or more
  constexpr double kSaturating = 0.85;  // of the resident slots
  constexpr double kStartKeys = 64, kCombineKeys = 32;
  const double saturating = kSaturating * static_cast<double>(slots);
  double best_time = 0;
  int64_t best = 1;
  // Beyond four waves more splits only add starts and partial outputs.
  const int64_t last = std::min(max_splits, std::max<int64_t>(1, 4 * slots / ctas));
  for (int64_t s = 1; s <= last; ++s) {
    const int64_t keys = ((max_context_len + s - 1) / s + kTileKeys - 1) / kTileKeys * kTileKeys;
    const int64_t splits = (max_context_len + keys - 1) / keys;
    if (splits != s) continue;  // rounding to whole tiles made this the same as a smaller count
    const int64_t total = ctas * splits, full = total / slots, rest = total % slots;
    const double load = static_cast<double>(full) * std::max(1.0, static_cast<double>(slots) / saturating) +
                        (rest > 0 ? std::max(1.0, static_cast<double>(rest) / saturating) : 0.0);
    const double time = (static_cast<double>(keys) + kStartKeys) * load + (splits > 1 ? kCombineKeys : 0.0);
    if (s == 1 || time < 0.97 * best_time) {
      best_time = time;
      best = splits;
    }
  }
  return best;
}

// TROUPE_ATTN_CLUSTER=0 turns the cluster split off, to measure.
bool cluster_split() {
  static const bool on = switched_on("TROUPE_ATTN_CLUSTER");
  return on;
}

// TROUPE_ATTN_DEEP=0 keeps two stages for every grid, to measure.
bool deep_stages() {
  static const bool on = switched_on("TROUPE_ATTN_DEEP");
  return on;
}

// TROUPE_ATTN_PUSH_COMBINE=0 combines a cluster's partials with combine_cluster, to measure.
bool push_combine() {
  static const bool on = switched_on("TROUPE_ATTN_PUSH_COMBINE");
  return on;
}

// Dynamic shared memory a block may opt into on this device, less a margin for the kernel's static
// shared memory (a flag).
int shared_memory_optin() { return device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>() - 1024; }

// Shared memory of paged_decode_kernel<D, S, CLUSTER>: the stages, and with CLUSTER room for the
// largest push combine (16 rows) where the device has it.
template <int D, int S, bool CLUSTER>
int granted_smem_bytes() {
  return CLUSTER ? std::min(shared_memory_optin(), decode_smem_bytes<D, S> + push_combine_bytes<D>(16))
                 : decode_smem_bytes<D, S>;
}

// paged_decode_kernel<D, S, CLUSTER, R> may take granted_smem_bytes on this device.
template <int D, int S, bool CLUSTER, DecodeRope R = DecodeRope::none>
void allow_stages() {
  static std::atomic<uint64_t> granted{0};
  allow_shared_memory(reinterpret_cast<const void*>(&paged_decode_kernel<D, S, CLUSTER, R>),
                      granted_smem_bytes<D, S, CLUSTER>(), granted);
}

// paged_decode_kernel<D, S, CLUSTER, R> on `grid` (in clusters of grid.x CTAs with CLUSTER), with the
// shared memory of S stages, and with CLUSTER of CTA 0's slots for the push combine where they fit.
template <int D, int S, bool CLUSTER, DecodeRope R>
void launch_stages(dim3 grid, DecodeParams p, cudaStream_t stream) {
  allow_stages<D, S, CLUSTER, R>();
  int smem = decode_smem_bytes<D, S>;
  p.push_rows = 0;
  if (CLUSTER && push_combine()) {
    const int rows = std::min(16, p.group);
    if (decode_smem_bytes<D, S> + push_combine_bytes<D>(rows) <= granted_smem_bytes<D, S, CLUSTER>()) {
      p.push_rows = rows;
      smem += push_combine_bytes<D>(rows);
    }
  }
  launch_overlapped_clusters<paged_decode_kernel<D, S, CLUSTER, R>>(grid, CLUSTER ? grid.x : 1, dim3(kThreads),
                                                                    static_cast<size_t>(smem), stream, p);
  TROUPE_CUDA_CHECK_LAUNCH(paged_decode_kernel);
}

// The launch's shape (cluster or not, splits, stages) depends on `a` alone, never on R, so that the
// kernel's own rope gives the arithmetic, hence the bits, of rope_store_kv then attention.
template <int D, DecodeRope R>
void launch(const AttentionArgs& a, const RopeStoreArgs& rope, cudaStream_t stream) {
  DecodeParams p{};
  p.rope = rope;
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
  p.num_heads = a.num_heads;
  p.num_kv_heads = a.num_kv_heads;
  p.group = a.num_heads / a.num_kv_heads;
  p.row_tiles = (p.group + 15) / 16;
  p.scale_log2 = a.scale * kLog2e;

  const int64_t ctas = static_cast<int64_t>(a.num_seqs) * a.num_kv_heads * p.row_tiles;
  if (cluster_split() && a.num_seqs == 1) {
    p.num_splits = kClusterSplits;
    p.split_keys = 0;  // each sequence's own, in the kernel
    const dim3 grid(kClusterSplits, static_cast<unsigned>(a.num_kv_heads * p.row_tiles), static_cast<unsigned>(a.num_seqs));
    // Deep stages where a CTA may hold more than two tiles of keys and the grid fills at most half the
    // SMs. An H100, qwen3-0.6b at batch 1 with graphs sized for 40960 keys (as troupe serve's): context
    // 2048 0.962 ms a step with five stages, 1.057 with three, 1.072 with two; context 256 0.838, 0.821,
    // 0.823 (`troupe bench decode --graph-context`); two sequences' 128 CTAs at 2048, when clusters took
    // them, 1.70 with five, 1.46 with two. With at most two tiles a CTA there is nothing more to copy
    // early, and the five stages' shared memory only keeps the next kernel's CTAs off the SMs: llama-3.1-8b
    // at context 512–656 (graphs sized for 656) on two 4 × H200 machines, tp1 4.367 -> 4.343 and 4.330 ->
    // 4.281 ms, tp2 2.608 -> 2.583 and 2.610 -> 2.580, tp4 1.706 -> 1.694 and 1.703 -> 1.691 with two
    // stages (docs/benchmarks.md). TROUPE_ATTN_DEEP_TILES sets the tiles a CTA must be able to hold
    // for five stages (2: the earlier rule), to measure.
    static const int64_t deep_tiles = switch_value("TROUPE_ATTN_DEEP_TILES", 3);
    if (deep_stages() && a.max_context_len > (deep_tiles - 1) * kClusterSplits * kTileKeys &&
        2 * ctas * kClusterSplits <= a.sm_count)
      launch_stages<D, kDeepStages, true, R>(grid, p, stream);
    else
      launch_stages<D, kDecodeStages, true, R>(grid, p, stream);
    return;
  }
  const int64_t partial_floats = static_cast<int64_t>(a.num_seqs) * a.num_heads * (D + 2);
  // The split counters sit at the end of the workspace; a launch with more groups than counters
  // does not split.
  const int64_t counters = static_cast<int64_t>(a.sm_count) * kSplitCountersPerSm;
  int64_t max_splits = 1;
  if (a.workspace != nullptr && a.max_context_len > kMinSplitKeys && ctas <= counters &&
      static_cast<int64_t>(a.workspace_floats) > counters) {
    max_splits = std::min<int64_t>((a.max_context_len + kMinSplitKeys - 1) / kMinSplitKeys,
                                   (static_cast<int64_t>(a.workspace_floats) - counters) / partial_floats);
  }
  allow_stages<D, kDecodeStages, false>();  // before the occupancy query below (of the kernel without rope)
  // A few sequences whose contexts fit the deep stages' copy before the wait: one CTA each is on chip
  // when rope ends, where splits would add their combine (a fence, a counter, the partials' reads).
  const bool deep_whole = deep_stages() && ctas <= a.sm_count && a.max_context_len <= kDeepStages * kTileKeys;
  int64_t splits = 1;
  if (max_splits > 1 && !deep_whole) {
    static std::atomic<int> ctas_per_sm{0};
    if (ctas_per_sm.load(std::memory_order_relaxed) == 0) {
      int n = 0;
      TROUPE_CUDA_CHECK(
          cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, paged_decode_kernel<D, kDecodeStages>, kThreads,
                                                        static_cast<size_t>(decode_smem_bytes<D, kDecodeStages>)));
      ctas_per_sm.store(std::max(n, 1), std::memory_order_relaxed);
    }
    splits = choose_splits(ctas, static_cast<int64_t>(a.sm_count) * ctas_per_sm.load(std::memory_order_relaxed),
                           a.max_context_len, max_splits);
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
    p.counters = reinterpret_cast<uint32_t*>(a.workspace + a.workspace_floats - counters);
  }

  const dim3 grid(static_cast<unsigned>(p.num_splits), static_cast<unsigned>(a.num_kv_heads * p.row_tiles),
                  static_cast<unsigned>(a.num_seqs));
  if (ctas * p.num_splits <= a.sm_count && deep_stages())
    launch_stages<D, kDeepStages, false, R>(grid, p, stream);
  else
    launch_stages<D, kDecodeStages, false, R>(grid, p, stream);
}

}  // namespace

void paged_decode(const AttentionArgs& a, cudaStream_t stream) {
  switch (a.head_dim) {
    case 16: return launch<16, DecodeRope::none>(a, {}, stream);
    case 32: return launch<32, DecodeRope::none>(a, {}, stream);
    case 64: return launch<64, DecodeRope::none>(a, {}, stream);
    case 128: return launch<128, DecodeRope::none>(a, {}, stream);
    default: throw std::invalid_argument("paged_decode: unsupported head_dim");
  }
}

bool paged_decode_rotates(int head_dim) { return head_dim == 64 || head_dim == 128; }

void paged_decode_with_rope(const AttentionArgs& a, const RopeStoreArgs& rope, cudaStream_t stream) {
  const bool norm = rope.q_norm != nullptr;
  switch (a.head_dim) {
    case 64:
      return norm ? launch<64, DecodeRope::norm_rotate>(a, rope, stream)
                  : launch<64, DecodeRope::rotate>(a, rope, stream);
    case 128:
      return norm ? launch<128, DecodeRope::norm_rotate>(a, rope, stream)
                  : launch<128, DecodeRope::rotate>(a, rope, stream);
    default: throw std::invalid_argument("paged_decode_with_rope: unsupported head_dim");
  }
}

}  // namespace troupe::cuda::attn
