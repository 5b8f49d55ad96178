// Element-wise and gather launchers (kernels/elementwise.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace troupe::cuda {

// inout[i] += x[i] over n elements, f32 math, rounded once to bf16.
void add(const __nv_bfloat16* x, __nv_bfloat16* inout, int64_t n, cudaStream_t stream);

// out[t, n] += bias[n] for a row-major out[tokens, width]: the bias of a linear layer whose GEMM could
// not fuse it.
void add_bias(const __nv_bfloat16* bias, __nv_bfloat16* out, int64_t tokens, int64_t width, cudaStream_t stream);

// out row t = table row ids[t], rows of `row_bytes` bytes (any element type). An id outside
// [0, table_rows) yields a row of zero bytes: a kernel cannot throw, and zeros are what a vocabulary
// shard contributes for a token it does not own.
void gather_rows(const void* table, int64_t table_rows, const int32_t* ids, int64_t count, std::size_t row_bytes,
                 void* out, cudaStream_t stream);

}  // namespace troupe::cuda
