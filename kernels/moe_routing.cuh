// Router top-k for mixture-of-experts layers (kernels/moe_routing.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace troupe::cuda {

// For each of `tokens` rows of router logits [tokens, experts]: softmax in f32, the top_k largest
// probabilities in descending order (ties → the lower expert id, as the CPU reference's partial sort
// orders them), optionally renormalised to sum 1. weights: f32 [tokens, top_k], ids: i32 [tokens,
// top_k]. The softmax sums in expert order in one thread and the exponentials are rounded from
// double precision, so probabilities are bit-identical to the CPU reference's wherever glibc's expf
// is correctly rounded (nearly always), and so are the chosen ids.
void moe_route(const __nv_bfloat16* logits, int64_t tokens, int experts, int top_k, bool renormalize, float* weights,
               int32_t* ids, cudaStream_t stream);
void moe_route(const float* logits, int64_t tokens, int experts, int top_k, bool renormalize, float* weights,
               int32_t* ids, cudaStream_t stream);

}  // namespace troupe::cuda
