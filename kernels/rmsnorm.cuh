// RMSNorm launchers (kernels/rmsnorm.cu). bf16 in and out, f32 math; rows are `width` wide and
// contiguous. Any width works; 16-byte accesses are used when the width and every pointer allow.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace troupe::cuda {

// out = x / sqrt(mean(x²) + eps) * weight, row by row. out may be x (in place).
void rms_norm(const __nv_bfloat16* x, const __nv_bfloat16* weight, __nv_bfloat16* out, int64_t rows, int64_t width,
              float eps, cudaStream_t stream);

// residual += x (rounded to bf16 and stored, as the next layer reads it), then out = rms_norm(residual)
// of that stored value. out may be x.
void add_rms_norm(__nv_bfloat16* residual, const __nv_bfloat16* x, const __nv_bfloat16* weight, __nv_bfloat16* out,
                  int64_t rows, int64_t width, float eps, cudaStream_t stream);

}  // namespace troupe::cuda
