// The one seam between model code and hardware. The model (engine/model.cpp) is written once against
// this interface; the CPU backend (fp32, the reference) and the CUDA backend (bf16, kernels/) implement
// it. Every op works on tensors the same backend allocated; calls are ordered (a GPU backend enqueues
// them on one stream) and results are visible to the host only after read()/synchronize().
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <utility>
#include <vector>

#include "engine/pushed_all_reduce.hpp"
#include "engine/tensor.hpp"

namespace troupe {

// Where q, k and v sit inside one fused qkv activation row: q heads, then k heads, then v heads,
// each head `head_dim` wide.
struct QkvLayout {
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int q_size() const { return num_heads * head_dim; }
  int kv_size() const { return num_kv_heads * head_dim; }
  int width() const { return q_size() + 2 * kv_size(); }
};

// Per-step description of a batch of sequences for attention over a paged KV cache (device tensors,
// all i32). Token t of the batch belongs to one sequence; the sequences' new tokens are contiguous.
// This one layout covers prefill, chunked prefill, prefix-cache hits and decode.
struct AttentionMetadata {
  Tensor positions;     // [T] position of each new token in its sequence
  Tensor slot_mapping;  // [T] cache slot (block * block_size + offset) that receives its k and v
  Tensor query_start;   // [S + 1] first new token of each sequence, then T
  Tensor context_lens;  // [S] tokens in the cache for the sequence once this step's are written
  Tensor block_tables;  // [S, max_blocks_per_seq] cache blocks of each sequence, in order
  int num_seqs = 0;
  int num_tokens = 0;
  int max_query_len = 0;
  int max_context_len = 0;
  int block_size = 16;
};

// One layer's paged cache: [num_blocks, block_size, num_kv_heads, head_dim] each.
struct KvLayer {
  Tensor k;
  Tensor v;
};

// cos and sin of position × inverse frequency, [max_positions, head_dim / 2] each (f32), for
// rotate-half ("neox") rotary embeddings as Llama and Qwen use them.
struct RopeTable {
  Tensor cos;
  Tensor sin;
};

// Where a tensor sits in the whole tensor it was cut from: element i (row-major in the slice) is
// element first + (i / cols) * stride + i % cols of the whole. The default is the whole tensor.
struct RandomWindow {
  int64_t first = 0;
  int64_t cols = INT64_MAX;  // the slice's row length (its last dimension)
  int64_t stride = 0;        // the whole tensor's row length
  int64_t index(int64_t i) const { return cols == INT64_MAX ? first + i : first + (i / cols) * stride + i % cols; }
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual Device device() const = 0;
  // The element type of weights and activations: f32 on the CPU, bf16 on CUDA.
  virtual DType compute_dtype() const = 0;

  // Memory. Contents of allocate() are unspecified.
  virtual Tensor allocate(std::vector<int64_t> shape, DType dtype) = 0;
  // Copies host data into dst, converting between floating types (f32/f16/bf16) when they differ;
  // integer tensors must match exactly. Element counts must match.
  virtual void upload(const HostView& src, const Tensor& dst) = 0;
  // Several small uploads (a step's inputs), each what upload() makes of it; where the backend can,
  // in one transfer instead of one each.
  struct Upload {
    HostView src;
    Tensor dst;
  };
  virtual void upload_all(std::span<const Upload> uploads) {
    for (const Upload& u : uploads) upload(u.src, u.dst);
  }
  // Copies src into host memory as f32 (floating tensors) or as is (integer tensors).
  virtual void download(const Tensor& src, void* dst) = 0;
  virtual void synchronize() = 0;
  // Free and total bytes of the device's memory; {0, 0} where there is no such limit (the CPU).
  virtual std::pair<int64_t, int64_t> memory() const { return {0, 0}; }
  // Graph capture (CUDA graphs): the ops called between begin_capture() and end_capture() are
  // recorded instead of run, and replay() runs them again, on the same memory, as one launch. A
  // backend without graphs returns false from begin_capture() and nothing is recorded.
  virtual bool begin_capture() { return false; }
  virtual std::shared_ptr<void> end_capture() { return nullptr; }
  virtual void replay(const std::shared_ptr<void>& graph) { (void)graph; }
  // Changes whenever a buffer the backend keeps between calls (an op's scratch) moves: a captured
  // graph holds pointers into those buffers, so graphs recorded under another value are stale.
  virtual uint64_t workspace_generation() const { return 0; }
  // Sizes moe_experts' scratch for `tokens` rows of top_k choices over these experts now, so that
  // no later call grows it (and moves it under the captured graphs).
  virtual void reserve_moe_experts(int64_t tokens, int top_k, const Tensor& gate_up, const Tensor& down) {
    (void)tokens, (void)top_k, (void)gate_up, (void)down;
  }
  // The same for scatter_add_rows of `count` source rows into `rows` rows.
  virtual void reserve_scatter_add_rows(int64_t count, int64_t rows) { (void)count, (void)rows; }
  // Fills a floating tensor with deterministic pseudo-random values of mean `mean` and standard
  // deviation `std` (dummy weights: the shapes of a real model without its files). Element i's value
  // comes from counter window.index(i): `t` may be a slice of a larger tensor, and each element gets
  // the value it has in the whole one, so every parallel layout holds the same dummy model.
  virtual void fill_random(const Tensor& t, uint64_t seed, float mean, float std, RandomWindow window = {}) = 0;

  // out[t] = table[ids[t]], or a row of zeros where ids[t] < 0 (a token whose embedding row lives on
  // another tensor-parallel rank); also gathers rows of activations.
  virtual void embedding(const Tensor& table, const Tensor& ids, const Tensor& out) = 0;
  // out[index[i]] += src[i] for every row i of src (rows of out may repeat in index).
  virtual void scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& out) = 0;
  // out[r, p·C + c] = stacked[p, r, c] for p·C + c < out's width: puts side by side the column
  // blocks that P ranks gathered as a [P, R, C] stack (vocab-parallel logits).
  virtual void unstack_columns(const Tensor& stacked, const Tensor& out) = 0;
  // Every element 0.
  virtual void zero(const Tensor& t) = 0;
  // out = rms_norm(x) * weight over the last dimension, row by row.
  virtual void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) = 0;
  // residual += x; out = rms_norm(residual) * weight.
  virtual void add_rms_norm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                            const Tensor& out) = 0;
  // out[T, N] = x[T, K] · w[N, K]ᵀ (+ bias[N]). Accumulation in f32.
  virtual void linear(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& out) = 0;
  // out[T, I] = silu(gate_up[:, :I]) * gate_up[:, I:].
  virtual void silu_mul(const Tensor& gate_up, const Tensor& out) = 0;
  // out = silu_mul(gate_up) · wᵀ, the end of a SwiGLU MLP. act [T, I] is scratch that holds the
  // activation where it is computed on its own; a backend may fuse the two (the CUDA backend's
  // decode GEMV does at one token) and leave act untouched.
  virtual void silu_mul_linear(const Tensor& gate_up, const Tensor& w, const Tensor& act, const Tensor& out) {
    silu_mul(gate_up, act);
    linear(act, w, nullptr, out);
  }
  // inout += x.
  virtual void add(const Tensor& x, const Tensor& inout) = 0;

  // The residual stream's ops around a projection, which a backend may fuse into it (the CUDA
  // backend's decode GEMV does at a few tokens); by default the ops one after another, with the
  // scratch tensor the caller passes.
  // out = rms_norm(x) · weight, then · wᵀ (+ bias); normed [T, K] is scratch.
  virtual void rms_norm_linear(const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& w,
                               const Tensor* bias, const Tensor& normed, const Tensor& out) {
    rms_norm(x, norm_weight, eps, normed);
    linear(normed, w, bias, out);
  }
  // Whether linear_add and silu_mul_linear_add with weight w on `tokens` rows fuse the add (else the
  // model adds a sublayer's output at the next norm, add_rms_norm, one kernel fewer than an add).
  virtual bool fuses_residual_add(int64_t tokens, const Tensor& w) const {
    (void)tokens, (void)w;
    return false;
  }
  // residual += x · wᵀ (+ bias); delta [T, N] is scratch.
  virtual void linear_add(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& delta,
                          const Tensor& residual) {
    linear(x, w, bias, delta);
    add(delta, residual);
  }
  // residual += silu_mul(gate_up) · wᵀ; act [T, I] and delta [T, N] are scratch.
  virtual void silu_mul_linear_add(const Tensor& gate_up, const Tensor& w, const Tensor& act, const Tensor& delta,
                                   const Tensor& residual) {
    silu_mul_linear(gate_up, w, act, delta);
    add(delta, residual);
  }

  // A tensor-parallel all-reduce sent by the projection that makes its message
  // (engine/pushed_all_reduce.hpp), for backends whose kernels can write into peers' memory.
  // Whether linear_push and silu_mul_linear_push with weight w on `tokens` rows are available.
  virtual bool pushes_output(int64_t tokens, const Tensor& w) const {
    (void)tokens, (void)w;
    return false;
  }
  // out = x · wᵀ (+ bias), and out sent to every peer's mailbox of `ar` (this rank's part of the sum).
  virtual void linear_push(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& out,
                           const PushedAllReduce& ar);
  // out = silu_mul(gate_up) · wᵀ, sent like linear_push's.
  virtual void silu_mul_linear_push(const Tensor& gate_up, const Tensor& w, const Tensor& out,
                                    const PushedAllReduce& ar);
  // residual += Σ over ranks of their parts (this rank's: delta, as the push left it; the peers':
  // in the mailboxes), the sum rounded before the add: Communicator::all_reduce_add's result.
  virtual void gather_add(const Tensor& delta, const Tensor& residual, const PushedAllReduce& ar);
  // gather_add, then normed = rms_norm(residual) · norm_weight: the next sublayer's norm made by the
  // gather, which holds the sum, so that the projection after it takes normed as it is (normed_linear);
  // gather_normalises says whether the backend does this in one kernel and gains by it (else the
  // gather, and the norm fused into the projection as rms_norm_linear fuses it).
  virtual bool gather_normalises(int64_t tokens) const {
    (void)tokens;
    return false;
  }
  // out = normed · wᵀ (+ bias), normed being gather_add_rms_norm's output: linear's result; a backend
  // may read the input as its fused rms_norm_linear reads the norm it computes (the CUDA GEMV: copied
  // into each block's shared memory once, instead of read from L2 by every warp).
  virtual void normed_linear(const Tensor& normed, const Tensor& w, const Tensor* bias, const Tensor& out) {
    linear(normed, w, bias, out);
  }
  virtual void gather_add_rms_norm(const Tensor& delta, const Tensor& residual, const PushedAllReduce& ar,
                                   const Tensor& norm_weight, float eps, const Tensor& normed) {
    gather_add(delta, residual, ar);
    rms_norm(residual, norm_weight, eps, normed);
  }

  // Per-head RMSNorm of q and k inside fused qkv rows (Qwen3), in place.
  virtual void qk_norm(const Tensor& qkv, const QkvLayout& layout, const Tensor& q_weight, const Tensor& k_weight,
                       float eps) = 0;
  // Rotates q and k of each token by its position (in place), then writes its k and v into the cache
  // slots of meta.slot_mapping.
  virtual void rope_store_kv(const Tensor& qkv, const QkvLayout& layout, const AttentionMetadata& meta,
                             const RopeTable& rope, const KvLayer& cache) = 0;
  // qk_norm, then rope_store_kv (Qwen3's order); a backend may do both in one pass over the heads.
  virtual void qk_norm_rope_store_kv(const Tensor& qkv, const QkvLayout& layout, const Tensor& q_weight,
                                     const Tensor& k_weight, float eps, const AttentionMetadata& meta,
                                     const RopeTable& rope, const KvLayer& cache) {
    qk_norm(qkv, layout, q_weight, k_weight, eps);
    rope_store_kv(qkv, layout, meta, rope, cache);
  }
  // Causal attention of each new token's q over its sequence's cached k and v (which already hold this
  // step's tokens). Query heads share kv heads in groups (GQA). out: [T, num_heads * head_dim].
  virtual void attention(const Tensor& qkv, const QkvLayout& layout, const KvLayer& cache,
                         const AttentionMetadata& meta, float scale, const Tensor& out) = 0;
  // A layer's attention from its qkv rows: rope_store_kv (qk_norm_rope_store_kv where q_norm and
  // k_norm are set, Qwen3's), then attention into out. A backend may do it in one pass (the CUDA
  // backend does at decode, where a kernel of its own for the rope costs more than its work): then
  // the cache and out are what the ops one after another give, but q and k in qkv are not
  // necessarily rotated (or normalised) in place afterwards; the caller must not read them.
  virtual void rope_store_kv_attention(const Tensor& qkv, const QkvLayout& layout, const AttentionMetadata& meta,
                                       const RopeTable& rope, const KvLayer& cache, float scale, const Tensor& out,
                                       const Tensor* q_norm, const Tensor* k_norm, float eps) {
    if (q_norm)
      qk_norm_rope_store_kv(qkv, layout, *q_norm, *k_norm, eps, meta, rope, cache);
    else
      rope_store_kv(qkv, layout, meta, rope, cache);
    attention(qkv, layout, cache, meta, scale, out);
  }

  // Mixture of experts. Routing: softmax over router_logits [T, E] in f32, the top_k largest
  // (weights f32 [T, k], ids i32 [T, k]), renormalised to sum 1 when asked.
  virtual void moe_route(const Tensor& router_logits, int top_k, bool renormalize, const Tensor& topk_weights,
                         const Tensor& topk_ids) = 0;
  // out[t] = Σ_j w[t, j] · expert_{ids[t, j]}(x[t]) over the experts this rank holds, those with ids
  // in [expert_begin, expert_begin + E_local); others contribute nothing (their rank adds them).
  // gate_up: [E_local, 2 I, H] (gate rows then up rows); down: [E_local, H, I].
  virtual void moe_experts(const Tensor& x, const Tensor& topk_weights, const Tensor& topk_ids,
                           const Tensor& gate_up, const Tensor& down, int expert_begin, const Tensor& out) = 0;
  // inout[t] += sigmoid(gate[t, 0]) * x[t] (Qwen2-MoE's gated shared expert).
  virtual void add_sigmoid_gated(const Tensor& x, const Tensor& gate, const Tensor& inout) = 0;
};

// Only a backend whose pushes_output is true is asked for these.
inline void Backend::linear_push(const Tensor&, const Tensor&, const Tensor*, const Tensor&, const PushedAllReduce&) {
  throw std::logic_error("Backend::linear_push: this backend does not push (ask pushes_output)");
}
inline void Backend::silu_mul_linear_push(const Tensor&, const Tensor&, const Tensor&, const PushedAllReduce&) {
  throw std::logic_error("Backend::silu_mul_linear_push: this backend does not push (ask pushes_output)");
}
inline void Backend::gather_add(const Tensor&, const Tensor&, const PushedAllReduce&) {
  throw std::logic_error("Backend::gather_add: this backend does not push (ask pushes_output)");
}

}  // namespace troupe
