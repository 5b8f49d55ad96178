// The attention entry: checks what the kernels rely on, then picks decode or prefill.
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/attention.cuh"
#include "kernels/attention_tiles.cuh"

namespace troupe::cuda {

bool attention_supports_head_dim(int head_dim) {
  return head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128;
}

size_t attention_workspace_floats(int sm_count) {
  // Partial outputs (head_dim floats, at most 128) plus max and sum for the 16 query rows of
  // kWorkspaceCtasPerSm CTAs per SM: about 8.8 MB on 132 SMs. Where a step would want more (many query
  // heads per kv head), the decode path takes fewer splits instead.
  // Then the split counters (zero, and left zero by every launch), as 32-bit words.
  const size_t sms = static_cast<size_t>(sm_count > 0 ? sm_count : 132);
  return sms * attn::kWorkspaceCtasPerSm * 16 * (128 + 2) + sms * attn::kSplitCountersPerSm;
}

namespace attn {

void allow_shared_memory(const void* kernel, int bytes, std::atomic<uint64_t>& granted) {
  if (bytes <= 48 * 1024) return;
  once_per_device(granted, [&] {
    TROUPE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    // All of L1 as shared memory: without it the driver may pick a carveout that fits one CTA fewer
    // per SM (these kernels stream through shared memory and barely use L1).
    TROUPE_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
  });
}

}  // namespace attn

namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("attention: " + what);
}

// What both kernels rely on (throws std::invalid_argument where it does not hold).
void check(const AttentionArgs& a) {
  require(attention_supports_head_dim(a.head_dim),
          "head_dim " + std::to_string(a.head_dim) + " is not supported (16, 32, 64, 128)");
  require(a.num_kv_heads > 0 && a.num_heads % a.num_kv_heads == 0,
          std::to_string(a.num_heads) + " query heads are not a multiple of " + std::to_string(a.num_kv_heads) +
              " kv heads");
  require(a.block_size > 0 && a.max_blocks_per_seq > 0, "block_size and the block table width must be positive");
  require(a.max_query_len >= 1 && a.max_query_len <= a.max_context_len,
          "max_query_len " + std::to_string(a.max_query_len) + " outside [1, max_context_len " +
              std::to_string(a.max_context_len) + "]");
  // 16-byte loads of q rows and cache rows (head_dim is a multiple of 8, so rows keep the alignment).
  require(is_aligned(a.qkv, 16) && is_aligned(a.k_cache, 16) && is_aligned(a.v_cache, 16) &&
              is_aligned(a.out, 16),
          "qkv, the cache and out must be 16-byte aligned");
  require(a.num_seqs <= 65535, "more than 65535 sequences in one step");
}

// TROUPE_ROPE_IN_ATTENTION=0 keeps rope_store_kv's kernel before the decode kernel, to measure.
bool rope_in_attention() {
  static const bool on = switched_on("TROUPE_ROPE_IN_ATTENTION");
  return on;
}

// Whether the decode kernel can take rope_store_kv's work for this step (see rope_store_kv_attention
// in attention.cuh): where rope_store_kv would run its 16-byte kernel (with the norm fused, if any),
// whose arithmetic and thread layout the decode kernel's rope repeats. A kv head's query heads in one
// row tile: the CTA that writes the newest key into the cache is then the only one that reads it.
bool decode_takes_rope(const RopeStoreArgs& r, const AttentionArgs& a) {
  return rope_in_attention() && a.max_query_len == 1 && r.num_tokens == a.num_seqs &&
         attn::paged_decode_rotates(a.head_dim) && a.num_heads / a.num_kv_heads <= 16 && is_aligned(r.cos, 16) &&
         is_aligned(r.sin, 16) && (r.q_norm == nullptr || (is_aligned(r.q_norm, 16) && is_aligned(r.k_norm, 16)));
}

}  // namespace

void attention(const AttentionArgs& a, cudaStream_t stream) {
  if (a.num_seqs == 0 || a.num_tokens == 0) return;
  check(a);
  if (a.max_query_len == 1) {
    attn::paged_decode(a, stream);
  } else {
    attn::flash_prefill(a, stream);
  }
}

void rope_store_kv_attention(const RopeStoreArgs& rope, const AttentionArgs& a, cudaStream_t stream) {
  require(rope.qkv == a.qkv && rope.k_cache == a.k_cache && rope.v_cache == a.v_cache &&
              rope.num_tokens == a.num_tokens && rope.num_heads == a.num_heads &&
              rope.num_kv_heads == a.num_kv_heads && rope.head_dim == a.head_dim,
          "rope and attention arguments describe different tensors");
  if (a.num_seqs > 0 && a.num_tokens > 0) {
    check(a);
    if (decode_takes_rope(rope, a)) {
      attn::paged_decode_with_rope(a, rope, stream);
      return;
    }
  }
  rope_store_kv(rope, stream);
  attention(a, stream);
}

}  // namespace troupe::cuda
