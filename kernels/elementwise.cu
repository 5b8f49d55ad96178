// Element-wise adds and the row gather behind embedding lookups. All memory-bound: 16-byte accesses
// when sizes and pointers allow, a scalar path for everything else.
#include <algorithm>
#include <bit>
#include <cub/device/device_radix_sort.cuh>
#include <limits>
#include <stdexcept>

#include "kernels/common.cuh"
#include "kernels/device_scratch.hpp"
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

// ---- scatter_add_rows -------------------------------------------------------------------------------
//
// Atomics would make the sum depend on the order in which blocks run (and bf16 atomics round after
// every add). Instead the indices are sorted stably (CUB's radix sort, keys = destination row, values
// = source row), so each destination row sees its sources as a contiguous, ascending run, and one
// block per destination row adds them in that order in f32 and rounds once.

namespace {

// Keys for the sort: the destination row, or out_rows (sorted last, never read) for a row outside
// the output; values: the source row.
__global__ void scatter_keys_kernel(const int32_t* __restrict__ index, int64_t count, int32_t out_rows,
                                    uint32_t* __restrict__ keys, int32_t* __restrict__ sources) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t r = index[i];
    keys[i] = (r >= 0 && r < out_rows) ? static_cast<uint32_t>(r) : static_cast<uint32_t>(out_rows);
    sources[i] = static_cast<int32_t>(i);
  }
}

// First position in sorted[0, n) whose key is >= key.
__device__ int32_t lower_bound(const uint32_t* sorted, int32_t n, uint32_t key) {
  int32_t lo = 0, hi = n;
  while (lo < hi) {
    const int32_t mid = lo + (hi - lo) / 2;
    if (sorted[mid] < key) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

template <int kVec>
__global__ void scatter_add_kernel(const bf16* __restrict__ src, const uint32_t* __restrict__ sorted_keys,
                                   const int32_t* __restrict__ sorted_sources, int32_t count, bf16* __restrict__ out,
                                   int64_t width) {
  __shared__ int32_t range[2];
  const uint32_t row = blockIdx.x;
  if (threadIdx.x == 0) range[0] = lower_bound(sorted_keys, count, row);
  if (threadIdx.x == 1) range[1] = lower_bound(sorted_keys, count, row + 1);
  __syncthreads();
  const int32_t begin = range[0], end = range[1];
  if (begin == end) return;  // no source for this row: it keeps its value
  bf16* dst = out + static_cast<int64_t>(row) * width;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * kVec; c < width; c += static_cast<int64_t>(blockDim.x) * kVec) {
    float acc[kVec];
    if constexpr (kVec == 8) {
      load8(dst + c).to_floats(acc);
    } else {
      acc[0] = __bfloat162float(dst[c]);
    }
    for (int32_t s = begin; s < end; ++s) {
      const bf16* row_src = src + static_cast<int64_t>(sorted_sources[s]) * width + c;
      if constexpr (kVec == 8) {
        const Bf16x8 v = load8(row_src);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float2 f = v.get(j);
          acc[2 * j] += f.x;
          acc[2 * j + 1] += f.y;
        }
      } else {
        acc[0] += __bfloat162float(*row_src);
      }
    }
    if constexpr (kVec == 8) {
      store8(dst + c, Bf16x8::of_floats(acc));
    } else {
      dst[c] = __float2bfloat16_rn(acc[0]);
    }
  }
}

struct ScatterScratch {
  uint32_t* keys_in;
  uint32_t* keys_out;
  int32_t* sources_in;
  int32_t* sources_out;
  void* sort_temp;
  std::size_t sort_temp_bytes;
  std::size_t total;
};

int sort_bits(int64_t out_rows) { return std::max(1, static_cast<int>(std::bit_width(static_cast<uint64_t>(out_rows)))); }

ScatterScratch carve_scatter(void* base, int64_t count, int64_t out_rows) {
  std::size_t temp_bytes = 0;
  // With a null buffer CUB only computes the size it needs; nothing runs on the device.
  TROUPE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, static_cast<const uint32_t*>(nullptr),
                                                    static_cast<uint32_t*>(nullptr),
                                                    static_cast<const int32_t*>(nullptr),
                                                    static_cast<int32_t*>(nullptr), static_cast<int>(count), 0,
                                                    sort_bits(out_rows)));
  ScratchCarver carver(base);
  ScatterScratch s{};
  s.keys_in = carver.take<uint32_t>(static_cast<std::size_t>(count));
  s.keys_out = carver.take<uint32_t>(static_cast<std::size_t>(count));
  s.sources_in = carver.take<int32_t>(static_cast<std::size_t>(count));
  s.sources_out = carver.take<int32_t>(static_cast<std::size_t>(count));
  s.sort_temp = carver.take<std::byte>(temp_bytes);
  s.sort_temp_bytes = temp_bytes;
  s.total = carver.bytes();
  return s;
}

void check_scatter_sizes(int64_t count, int64_t out_rows) {
  if (count > std::numeric_limits<int32_t>::max() || out_rows >= std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("scatter_add_rows: more than 2^31 rows");
}

}  // namespace

std::size_t scatter_add_rows_scratch_bytes(int64_t count, int64_t out_rows) {
  if (count == 0 || out_rows == 0) return 0;
  check_scatter_sizes(count, out_rows);
  return carve_scatter(nullptr, count, out_rows).total;
}

void scatter_add_rows(const bf16* src, const int32_t* index, int64_t count, bf16* out, int64_t out_rows, int64_t width,
                      void* scratch, std::size_t scratch_bytes, cudaStream_t stream) {
  if (count == 0 || out_rows == 0 || width == 0) return;
  check_scatter_sizes(count, out_rows);
  const ScatterScratch s = carve_scatter(scratch, count, out_rows);
  if (scratch_bytes < s.total) throw std::invalid_argument("scatter_add_rows: scratch too small");
  scatter_keys_kernel<<<grid_for(count), threads, 0, stream>>>(index, count, static_cast<int32_t>(out_rows), s.keys_in,
                                                               s.sources_in);
  TROUPE_CUDA_CHECK_LAUNCH(scatter_keys_kernel);
  std::size_t temp_bytes = s.sort_temp_bytes;
  TROUPE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(s.sort_temp, temp_bytes, s.keys_in, s.keys_out, s.sources_in,
                                                    s.sources_out, static_cast<int>(count), 0, sort_bits(out_rows),
                                                    stream));
  const bool vectorised = width % 8 == 0 && is_aligned(src, 16) && is_aligned(out, 16);
  const unsigned grid = static_cast<unsigned>(out_rows);
  if (vectorised) {
    scatter_add_kernel<8><<<grid, block_threads(width / 8, threads), 0, stream>>>(
        src, s.keys_out, s.sources_out, static_cast<int32_t>(count), out, width);
    TROUPE_CUDA_CHECK_LAUNCH(scatter_add_kernel<8>);
  } else {
    scatter_add_kernel<1><<<grid, block_threads(width, threads), 0, stream>>>(
        src, s.keys_out, s.sources_out, static_cast<int32_t>(count), out, width);
    TROUPE_CUDA_CHECK_LAUNCH(scatter_add_kernel<1>);
  }
}

// ---- copy_words ----------------------------------------------------------------------------------------

namespace {

__global__ void copy_words_kernel(const WordCopies copies) {
  for (int i = 0; i < copies.count; ++i)
    for (int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < copies.words[i];
         w += static_cast<int64_t>(gridDim.x) * blockDim.x)
      copies.dst[i][w] = copies.src[i][w];
}

}  // namespace

void copy_words(const WordCopies& copies, cudaStream_t stream) {
  int64_t most = 0;
  for (int i = 0; i < copies.count; ++i) most = std::max(most, copies.words[i]);
  if (most == 0) return;
  copy_words_kernel<<<grid_for(most), threads, 0, stream>>>(copies);
  TROUPE_CUDA_CHECK_LAUNCH(copy_words_kernel);
}

// ---- unstack_columns --------------------------------------------------------------------------------

namespace {

// In units of Unit (the widest access that divides a column block, the output width and both
// pointers), so a unit never straddles two parts.
template <class Unit>
__global__ void unstack_columns_kernel(const Unit* __restrict__ stacked, int64_t rows, int64_t cols_units,
                                       Unit* __restrict__ out, int64_t width_units) {
  const int64_t n = rows * width_units;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / width_units, c = i % width_units;
    const int64_t part = c / cols_units;
    out[i] = stacked[(part * rows + r) * cols_units + c % cols_units];
  }
}

template <class Unit>
void launch_unstack(const void* stacked, int64_t rows, int64_t cols_bytes, void* out, int64_t width_bytes,
                    cudaStream_t stream) {
  const int64_t cols_units = cols_bytes / static_cast<int64_t>(sizeof(Unit));
  const int64_t width_units = width_bytes / static_cast<int64_t>(sizeof(Unit));
  unstack_columns_kernel<Unit><<<grid_for(rows * width_units), threads, 0, stream>>>(
      static_cast<const Unit*>(stacked), rows, cols_units, static_cast<Unit*>(out), width_units);
  TROUPE_CUDA_CHECK_LAUNCH(unstack_columns_kernel);
}

}  // namespace

void unstack_columns(const void* stacked, int64_t parts, int64_t rows, int64_t cols, void* out, int64_t width,
                     std::size_t elem_bytes, cudaStream_t stream) {
  if (rows == 0 || width == 0) return;
  if (width > parts * cols) throw std::invalid_argument("unstack_columns: output wider than the stack");
  const int64_t cols_bytes = cols * static_cast<int64_t>(elem_bytes);
  const int64_t width_bytes = width * static_cast<int64_t>(elem_bytes);
  auto fits = [&](int64_t unit) {
    return cols_bytes % unit == 0 && width_bytes % unit == 0 && is_aligned(stacked, unit) && is_aligned(out, unit);
  };
  if (fits(16)) {
    launch_unstack<uint4>(stacked, rows, cols_bytes, out, width_bytes, stream);
  } else if (fits(8)) {
    launch_unstack<uint2>(stacked, rows, cols_bytes, out, width_bytes, stream);
  } else if (fits(4)) {
    launch_unstack<uint32_t>(stacked, rows, cols_bytes, out, width_bytes, stream);
  } else if (fits(2)) {
    launch_unstack<uint16_t>(stacked, rows, cols_bytes, out, width_bytes, stream);
  } else {
    launch_unstack<uint8_t>(stacked, rows, cols_bytes, out, width_bytes, stream);
  }
}

}  // namespace troupe::cuda
