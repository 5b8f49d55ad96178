// Attention over the paged KV cache (kernels/attention.cu picks the path; the kernels live in
// kernels/paged_decode.cu and kernels/flash_prefill.cu). bf16 q, k, v and output, f32 accumulation.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/rope_kv.cuh"

namespace troupe::cuda {

// One step's attention, in the terms of engine/backend.hpp's QkvLayout, KvLayer and AttentionMetadata.
// All pointers are device pointers.
struct AttentionArgs {
  const __nv_bfloat16* qkv = nullptr;  // [num_tokens, (num_heads + 2 num_kv_heads) head_dim]
  __nv_bfloat16* out = nullptr;        // [num_tokens, num_heads head_dim]
  const __nv_bfloat16* k_cache = nullptr;  // [blocks, block_size, num_kv_heads, head_dim]
  const __nv_bfloat16* v_cache = nullptr;
  const int32_t* query_start = nullptr;   // [num_seqs + 1]
  const int32_t* context_lens = nullptr;  // [num_seqs]
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  int num_seqs = 0;
  int num_tokens = 0;
  int max_query_len = 0;
  int max_context_len = 0;
  int max_blocks_per_seq = 0;
  int block_size = 16;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float scale = 1.0f;
  // Scratch for the split-context decode path (partial outputs and their max/sum, then counters that
  // must be zero before the first call); see attention_workspace_floats. The decode path uses fewer
  // splits rather than overrun it.
  float* workspace = nullptr;
  size_t workspace_floats = 0;
  int sm_count = 132;
};

// True when attention() supports this head dimension (16, 32, 64, 128).
bool attention_supports_head_dim(int head_dim);

// Floats of workspace that let the decode path split long contexts as finely as it ever wants on a
// device of `sm_count` multiprocessors; zero it once after allocating it. Fixed per device, so that
// one allocation at first use serves every later step (a CUDA-graph-captured step cannot allocate).
size_t attention_workspace_floats(int sm_count);

// Causal attention of each new token over its sequence's cached keys and values (which already hold
// this step's tokens). Every sequence with one new token (max_query_len == 1): the paged decode
// kernel; otherwise the tiled prefill kernel, which also serves chunked prefill, prefix-cache hits
// and mixed batches. Throws std::invalid_argument for an unsupported head dimension, a head count
// that is not a multiple of the kv heads, or pointers that are not 16-byte aligned.
void attention(const AttentionArgs& args, cudaStream_t stream);

// rope_store_kv(rope, …) then attention(args, …) with the same results bit for bit (attention's output
// and the cache), in one kernel where the decode kernel can rotate each sequence's new token itself:
// one new token per sequence, head_dim 64 or 128, at most 16 query heads per kv head, 16-byte aligned
// rope tables and norm weights, and TROUPE_ROPE_IN_ATTENTION not 0 (which keeps the two kernels, to
// measure); otherwise the two calls. After the one kernel, q and k in qkv are neither rotated nor
// normalised in place: only attention reads them. rope and args must describe the same qkv, cache
// and heads.
void rope_store_kv_attention(const RopeStoreArgs& rope, const AttentionArgs& args, cudaStream_t stream);

}  // namespace troupe::cuda
