// RMSNorm and the fused residual add + RMSNorm that sits between every two sublayers.
//
// One block per row. A row of a hidden state (4 to 16 KB in bf16) stays in L1/L2 between the two
// passes, so the second pass re-reads it instead of holding it in shared memory: the kernel is bound by
// one HBM read and one write per element either way.
#include <limits>
#include <stdexcept>

#include "kernels/common.cuh"
#include "kernels/rmsnorm.cuh"

namespace troupe::cuda {
namespace {

constexpr int max_threads = 512;

template <int kVec>
__device__ __forceinline__ void load(const bf16* p, float (&v)[kVec]) {
  if constexpr (kVec == 8) {
    load8(p).to_floats(v);
  } else {
    static_assert(kVec == 1);
    v[0] = __bfloat162float(*p);
  }
}

template <int kVec>
__device__ __forceinline__ void store(bf16* p, const float (&v)[kVec]) {
  if constexpr (kVec == 8) {
    store8(p, Bf16x8::of_floats(v));
  } else {
    static_assert(kVec == 1);
    *p = __float2bfloat16_rn(v[0]);
  }
}

// kVec = 8 needs width % 8 == 0 and 16-byte aligned rows; kVec = 1 takes anything. Pointers that may
// alias (out == x) carry no __restrict__, so loads and stores stay in program order.
template <int kVec, bool kAddResidual>
__global__ void __launch_bounds__(max_threads)
    rms_norm_kernel(bf16* residual, const bf16* x, const bf16* __restrict__ weight, bf16* out, int width, float eps) {
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * width;
  const bf16* x_row = x + offset;
  bf16* residual_row = kAddResidual ? residual + offset : nullptr;
  bf16* out_row = out + offset;
  const int stride = blockDim.x * kVec;
  let_next_kernel_start();
  wait_for_previous_kernel();

  float sum_sq = 0.0f;
  for (int i = threadIdx.x * kVec; i < width; i += stride) {
    float v[kVec];
    load<kVec>(x_row + i, v);
    if constexpr (kAddResidual) {
      float r[kVec];
      load<kVec>(residual_row + i, r);
#pragma unroll
      for (int j = 0; j < kVec; ++j) r[j] += v[j];
      store<kVec>(residual_row + i, r);
      // Normalise the value the residual stream now holds, not the unrounded sum.
#pragma unroll
      for (int j = 0; j < kVec; ++j) v[j] = __bfloat162float(__float2bfloat16_rn(r[j]));
    }
#pragma unroll
    for (int j = 0; j < kVec; ++j) sum_sq += v[j] * v[j];
  }

  const float inv_rms = rsqrtf(block_sum(sum_sq) / static_cast<float>(width) + eps);

  // Each thread reads back only the elements it wrote above, so no barrier is needed for the residual.
  const bf16* normed_row = kAddResidual ? residual_row : x_row;
  for (int i = threadIdx.x * kVec; i < width; i += stride) {
    float v[kVec], w[kVec];
    load<kVec>(normed_row + i, v);
    load<kVec>(weight + i, w);
#pragma unroll
    for (int j = 0; j < kVec; ++j) v[j] = w[j] * (v[j] * inv_rms);
    store<kVec>(out_row + i, v);
  }
}

template <bool kAddResidual>
void launch(bf16* residual, const bf16* x, const bf16* weight, bf16* out, int64_t rows, int64_t width, float eps,
            cudaStream_t stream) {
  if (rows == 0 || width == 0) return;
  if (rows > std::numeric_limits<int32_t>::max() || width > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("rms_norm: more than 2^31 rows or columns");
  const bool vectorised = width % 8 == 0 && is_aligned(x, 16) && is_aligned(weight, 16) && is_aligned(out, 16) &&
                          (!kAddResidual || is_aligned(residual, 16));
  const dim3 grid(static_cast<unsigned>(rows));
  const int w = static_cast<int>(width);
  if (vectorised) {
    launch_overlapped<rms_norm_kernel<8, kAddResidual>>(grid, dim3(block_threads(width / 8, max_threads)), 0, stream,
                                                          residual, x, weight, out, w, eps);
    TROUPE_CUDA_CHECK_LAUNCH(rms_norm_kernel<8>);
  } else {
    launch_overlapped<rms_norm_kernel<1, kAddResidual>>(grid, dim3(block_threads(width, max_threads)), 0, stream,
                                                          residual, x, weight, out, w, eps);
    TROUPE_CUDA_CHECK_LAUNCH(rms_norm_kernel<1>);
  }
}

}  // namespace

void rms_norm(const bf16* x, const bf16* weight, bf16* out, int64_t rows, int64_t width, float eps,
              cudaStream_t stream) {
  launch<false>(nullptr, x, weight, out, rows, width, eps, stream);
}

void add_rms_norm(bf16* residual, const bf16* x, const bf16* weight, bf16* out, int64_t rows, int64_t width, float eps,
                  cudaStream_t stream) {
  launch<true>(residual, x, weight, out, rows, width, eps, stream);
}

}  // namespace troupe::cuda
