// Linear layers of a few tokens (decode at small batch) as a bandwidth-bound GEMV (kernels/gemv.cu):
// at 1–8 tokens a GEMM reads every weight once and does almost no math, so the kernel that streams
// the weight at the memory's rate wins, and cuBLASLt's tensor-core tiles mostly pad.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace troupe::cuda {

// The most tokens small_batch_linear takes.
constexpr int64_t kGemvMaxTokens = 8;

// out[t, n] = x[t, :] · w[n, :] (+ bias[n]) for t < tokens ≤ kGemvMaxTokens, like Gemm::linear: bf16
// in and out, f32 sums. Takes only what it handles well — k a multiple of 8 and x, w 16-byte aligned
// (rows of w and x then start aligned too) — and returns false, launching nothing, otherwise.
bool small_batch_linear(const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* bias, __nv_bfloat16* out,
                        int64_t tokens, int64_t n, int64_t k, cudaStream_t stream);

// out[t, n] = silu_mul(gate_up)[t, :] · w[n, :] with gate_up [tokens, 2k] ([gate | up] per row): the
// SwiGLU activation computed while the down projection reads it, one kernel instead of two, and the
// same bf16 values silu_mul followed by small_batch_linear give. Same conditions and result.
bool small_batch_silu_mul_linear(const __nv_bfloat16* gate_up, const __nv_bfloat16* w, __nv_bfloat16* out,
                                 int64_t tokens, int64_t n, int64_t k, cudaStream_t stream);

}  // namespace troupe::cuda
