// Linear layers of a few tokens (decode at small batch) as a bandwidth-bound GEMV (kernels/gemv.cu):
// at 1–8 tokens a GEMM reads every weight once and does almost no math, so the kernel that streams
// the weight at the memory's rate wins, and cuBLASLt's tensor-core tiles mostly pad. Being ours, it
// also takes in the small ops around a projection (the RMSNorm before it, the SwiGLU activation, the
// residual add after it), and starts reading its weight while the kernel before it still runs
// (programmatic dependent launch, kernels/common.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "engine/pushed_all_reduce.hpp"

namespace troupe::cuda {

// The most tokens small_batch_gemv takes.
constexpr int64_t kGemvMaxTokens = 8;

// The largest weight the register kernel (kernels/gemv.cu) is given, in MiB: kernels/cuda_backend.cpp
// sends bigger ones to cuBLASLt, and stream_gemv_takes some of them (see there).
constexpr int64_t kGemvMaxWeightMiB = 64;

// What the projection reads as its input rows.
enum class GemvInput {
  plain,     // x [tokens, k] as it is, read by every warp where it needs it
  // x as it is, copied into each block's shared memory first (one token): an input that every block
  // reads whole at once, as a norm's output made by the gather before it (engine's normed_linear);
  // every warp reading it from L2 at once crowds the few L2 slices that hold it.
  staged,
  rms_norm,  // rms_norm(x) · norm_weight, computed as kernels/rmsnorm.cu computes it (same bf16 values)
  silu_mul,  // silu(x[:, :k]) · x[:, k:] of x [tokens, 2k], as kernels/activation.cu's silu_mul rounds it
};

// out[t, n] = in(x)[t, :] · w[n, :] (+ bias[n]) for t < tokens ≤ kGemvMaxTokens, like Gemm::linear:
// bf16 in and out, f32 sums. add_to_out: out[t, n] += that value instead (the residual stream: the
// projection rounded to bf16 first, then the sum, as linear followed by add computes it).
struct GemvCall {
  const __nv_bfloat16* x = nullptr;
  const __nv_bfloat16* w = nullptr;
  const __nv_bfloat16* bias = nullptr;
  __nv_bfloat16* out = nullptr;
  int64_t tokens = 0, n = 0, k = 0;
  GemvInput input = GemvInput::plain;
  const __nv_bfloat16* norm_weight = nullptr;  // rms_norm: [k]
  float eps = 0.0f;
  bool add_to_out = false;
  // Where set, every output also goes to the peers' mailboxes of this pushed all-reduce, as this
  // rank's part of its sum (plain and silu_mul inputs, without add_to_out).
  const PushedAllReduce* push = nullptr;
  // Whether a projection that stream_gemv_takes may stream through shared memory; false keeps the
  // register kernel (tests hold the two to the same bits).
  bool stream = true;
};

// Takes only what it handles well — k a multiple of 8, x, w (and norm_weight) 16-byte aligned, an
// input held in shared memory (staged, rms_norm, silu_mul) of at most 48 KB — and returns false,
// launching nothing, otherwise.
bool small_batch_gemv(const GemvCall& call, cudaStream_t stream);

// Whether small_batch_gemv streams this projection through shared memory (kernels/stream_gemv.cu):
// one token and a big weight. It takes weights of any size, where the register kernel is kept to
// 64 MiB (kernels/cuda_backend.cpp).
bool stream_gemv_takes(int64_t tokens, int64_t n, int64_t k, GemvInput input);

// The plain projection: small_batch_gemv of {x, w, bias, out, tokens, n, k}.
bool small_batch_linear(const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* bias, __nv_bfloat16* out,
                        int64_t tokens, int64_t n, int64_t k, cudaStream_t stream);

}  // namespace troupe::cuda
