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

// Device scratch that scatter_add_rows needs for `count` source rows into `out_rows` rows.
std::size_t scatter_add_rows_scratch_bytes(int64_t count, int64_t out_rows);

// out[index[i]] += src[i] for the `count` rows of src (rows `width` wide, bf16, f32 sums rounded once
// per output element). Deterministic: the sources of each output row are found by a stable sort of
// the indices and added in ascending source order, as the CPU reference adds them, whatever the
// scheduling; no atomics. An index outside [0, out_rows) adds nothing (a kernel cannot throw).
// `scratch` holds scatter_add_rows_scratch_bytes(count, out_rows) bytes.
void scatter_add_rows(const __nv_bfloat16* src, const int32_t* index, int64_t count, __nv_bfloat16* out,
                      int64_t out_rows, int64_t width, void* scratch, std::size_t scratch_bytes, cudaStream_t stream);

// Each of the `count` (at most kMaxWordCopies) runs words[i] 4-byte words long from src[i] to dst[i],
// in one kernel: a step's small inputs read straight from pinned host memory (StagingRing::stage),
// where one copy each would cost the stream a copy's turn each.
constexpr int kMaxWordCopies = 8;
struct WordCopies {
  const uint32_t* src[kMaxWordCopies];
  uint32_t* dst[kMaxWordCopies];
  int64_t words[kMaxWordCopies];
  int count = 0;
};
void copy_words(const WordCopies& copies, cudaStream_t stream);

// out[r, p·cols + c] = stacked[p, r, c] for every column of out (width ≤ parts·cols): the column
// blocks of a [parts, rows, cols] stack side by side. Any element type of elem_bytes bytes.
void unstack_columns(const void* stacked, int64_t parts, int64_t rows, int64_t cols, void* out, int64_t width,
                     std::size_t elem_bytes, cudaStream_t stream);

}  // namespace troupe::cuda
