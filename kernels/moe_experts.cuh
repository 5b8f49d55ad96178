// The routed experts of a mixture-of-experts layer (kernels/moe_experts.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace troupe::cuda {

struct MoeExpertsShape {
  int64_t tokens = 0;
  int top_k = 0;         // routing slots per token (columns of topk_ids)
  int experts = 0;       // experts this rank holds (E_local)
  int expert_begin = 0;  // global id of the first of them
  int64_t hidden = 0;
  int64_t inter = 0;  // intermediate size of one expert (its slice, under tensor parallelism)
  // Tokens are processed in chunks whose per-slot intermediates fit in this many bytes of scratch.
  std::size_t chunk_bytes = std::size_t{256} << 20;
};

// Device scratch that moe_experts needs for this shape. Bounded (tokens are processed in chunks, so a
// long prefill does not need gigabytes), and it depends only on the shape, never on the routing.
std::size_t moe_experts_scratch_bytes(const MoeExpertsShape& shape);

// out[t] = Σ_j topk_weights[t, j] · expert_{topk_ids[t, j]}(x[t]) over the slots whose expert lies in
// [expert_begin, expert_begin + experts); other slots contribute nothing, and a token with no local
// slot gets a row of zeros. expert(x) = down · (silu(gate · x) ⊙ (up · x)).
//   x, out: bf16 [tokens, hidden]; topk_weights: f32 and topk_ids: i32, [tokens, top_k];
//   gate_up: bf16 [experts, 2·inter, hidden] (gate rows, then up rows); down: bf16 [experts, hidden, inter].
// The pipeline stays on the device (no host synchronisation, so it can be captured in a CUDA graph):
// a one-block plan kernel counts the slots of each local expert and gives each a row in an
// expert-sorted order; a grouped GEMM (mma.sync, bf16 in, f32 accumulate) reads each row's token
// straight from x and applies silu·up in its epilogue; a second grouped GEMM applies down; a combine
// kernel sums each token's slots in slot order with f32 weights. Grids are sized from the worst case
// for the token count, and tiles that the routing left empty exit at once. Deterministic: every
// result depends only on the inputs, never on scheduling (no atomics touch values).
void moe_experts(const __nv_bfloat16* x, const float* topk_weights, const int32_t* topk_ids,
                 const __nv_bfloat16* gate_up, const __nv_bfloat16* down, __nv_bfloat16* out,
                 const MoeExpertsShape& shape, void* scratch, std::size_t scratch_bytes, cudaStream_t stream);

}  // namespace troupe::cuda
