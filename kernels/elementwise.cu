// Element-wise adds and the row gather behind embedding lookups. All memory-bound: 16-byte accesses
// when sizes and pointers allow, a scalar path for everything else.
#include <algorithm>
#include <limits>
#include <stdexcept>

#include "kernels/common.cuh"
#include "kernels/elementwise.cuh"

namespace troupe::cuda {
namespace {

constexpr int threads = 256;
// Enough blocks to fill 132 SMs many times over; larger inputs loop (grid-stride).
constexpr int64_t max_blocks = 65535;

unsigned grid_for(int64_t items) {
  return static_cast<unsigned>(std::clamp<int64_t>(ceil_div(items, threads), 1, max_blocks));
}

__device__ __forceinline__ Bf16x8 add8(const Bf16x8& a, const Bf16x8& b) {
  Bf16x8 r;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 fa = a.get(j), fb = b.get(j);
    r.set(j, fa.x + fb.x, fa.y + fb.y);
  }
  return r;
}

// x and inout may be the same buffer (x += x), hence no __restrict__.
__global__ void add_x8_kernel(const bf16* x, bf16* inout, int64_t packs) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    store8(inout + 8 * i, add8(load8(x + 8 * i), load8(inout + 8 * i)));
}

__global__ void add_x1_kernel(const bf16* x, bf16* inout, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    inout[i] = __float2bfloat16_rn(__bfloat162float(x[i]) + __bfloat162float(inout[i]));
}

__global__ void add_bias_x8_kernel(const bf16* __restrict__ bias, bf16* out, int64_t packs, int64_t packs_per_row) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    store8(out + 8 * i, add8(load8(bias + 8 * (i % packs_per_row)), load8(out + 8 * i)));
}

__global__ void add_bias_x1_kernel(const bf16* __restrict__ bias, bf16* out, int64_t n, int64_t width) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(__bfloat162float(bias[i % width]) + __bfloat162float(out[i]));
}

// One block per output row; Chunk is the widest unit that divides the row and both base pointers.
template <class Chunk>
__global__ void gather_rows_kernel(const Chunk* __restrict__ table, int64_t table_rows, const int32_t* __restrict__ ids,
                                   int64_t chunks_per_row, Chunk* __restrict__ out) {
  const int64_t t = blockIdx.x;
  const int64_t id = ids[t];
  const bool valid = id >= 0 && id < table_rows;
  const Chunk* src = table + (valid ? id : 0) * chunks_per_row;
  Chunk* dst = out + t * chunks_per_row;
  for (int64_t c = threadIdx.x; c < chunks_per_row; c += blockDim.x) dst[c] = valid ? src[c] : Chunk{};
}

template <class Chunk>
void launch_gather(const void* table, int64_t table_rows, const int32_t* ids, int64_t count, std::size_t row_bytes,
                   void* out, cudaStream_t stream) {
  const int64_t chunks = static_cast<int64_t>(row_bytes / sizeof(Chunk));
  gather_rows_kernel<Chunk><<<static_cast<unsigned>(count), block_threads(chunks, threads), 0, stream>>>(
      static_cast<const Chunk*>(table), table_rows, ids, chunks, static_cast<Chunk*>(out));
  TROUPE_CUDA_CHECK_LAUNCH(gather_rows_kernel);
}

}  // namespace

void add(const bf16* x, bf16* inout, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  if (n % 8 == 0 && is_aligned(x, 16) && is_aligned(inout, 16)) {
    add_x8_kernel<<<grid_for(n / 8), threads, 0, stream>>>(x, inout, n / 8);
    TROUPE_CUDA_CHECK_LAUNCH(add_x8_kernel);
  } else {
    add_x1_kernel<<<grid_for(n), threads, 0, stream>>>(x, inout, n);
    TROUPE_CUDA_CHECK_LAUNCH(add_x1_kernel);
  }
}

void add_bias(const bf16* bias, bf16* out, int64_t tokens, int64_t width, cudaStream_t stream) {
  const int64_t n = tokens * width;
  if (n == 0) return;
  if (width % 8 == 0 && is_aligned(bias, 16) && is_aligned(out, 16)) {
    add_bias_x8_kernel<<<grid_for(n / 8), threads, 0, stream>>>(bias, out, n / 8, width / 8);
    TROUPE_CUDA_CHECK_LAUNCH(add_bias_x8_kernel);
  } else {
    add_bias_x1_kernel<<<grid_for(n), threads, 0, stream>>>(bias, out, n, width);
    TROUPE_CUDA_CHECK_LAUNCH(add_bias_x1_kernel);
  }
}

void gather_rows(const void* table, int64_t table_rows, const int32_t* ids, int64_t count, std::size_t row_bytes,
                 void* out, cudaStream_t stream) {
  if (count == 0 || row_bytes == 0) return;
  if (count > std::numeric_limits<int32_t>::max()) throw std::invalid_argument("gather_rows: more than 2^31 rows");
  auto fits = [&](std::size_t unit) {
    return row_bytes % unit == 0 && is_aligned(table, unit) && is_aligned(out, unit);
  };
  if (fits(16)) {
    launch_gather<uint4>(table, table_rows, ids, count, row_bytes, out, stream);
  } else if (fits(8)) {
    launch_gather<uint2>(table, table_rows, ids, count, row_bytes, out, stream);
  } else if (fits(4)) {
    launch_gather<uint32_t>(table, table_rows, ids, count, row_bytes, out, stream);
  } else if (fits(2)) {
    launch_gather<uint16_t>(table, table_rows, ids, count, row_bytes, out, stream);
  } else {
    launch_gather<uint8_t>(table, table_rows, ids, count, row_bytes, out, stream);
  }
}

}  // namespace troupe::cuda
