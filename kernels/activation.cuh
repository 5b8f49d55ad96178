// Gated activations (kernels/activation.cu). bf16 in and out, f32 math, one rounding per output.
// 16-byte accesses when the widths and every pointer allow them, a scalar path for anything else.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace troupe::cuda {

// out[t, i] = silu(gate_up[t, i]) * gate_up[t, inter + i] for a row-major gate_up[rows, 2·inter] and
// out[rows, inter] (SwiGLU: the gate half first, as the fused gate_up weights are stored).
void silu_mul(const __nv_bfloat16* gate_up, __nv_bfloat16* out, int64_t rows, int64_t inter, cudaStream_t stream);

// inout[t, :] += sigmoid(gate[t]) * x[t, :] over rows of `width` (Qwen2-MoE's gated shared expert;
// gate is the [rows, 1] output of the gate projection).
void add_sigmoid_gated(const __nv_bfloat16* x, const __nv_bfloat16* gate, __nv_bfloat16* inout, int64_t rows,
                       int64_t width, cudaStream_t stream);

}  // namespace troupe::cuda
