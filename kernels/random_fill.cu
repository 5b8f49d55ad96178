#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <stdexcept>
#include <type_traits>

#include "kernels/cuda_check.hpp"
#include "kernels/random_fill.cuh"

namespace troupe::cuda {
namespace {

__device__ float unit_normal(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < 4; ++k) sum += static_cast<float>((z >> (16 * k)) & 0xFFFF) / 65536.0f;
  return (sum - 2.0f) * 1.7320508f;
}

// RandomWindow::index, on the device.
__device__ int64_t whole_index(const RandomWindow& w, int64_t i) {
  return w.cols == INT64_MAX ? w.first + i : w.first + (i / w.cols) * w.stride + i % w.cols;
}

template <class T>
__global__ void random_fill(T* out, int64_t n, uint64_t seed, float mean, float std, RandomWindow window) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = mean + std * unit_normal(seed, static_cast<uint64_t>(whole_index(window, i)));
    if constexpr (std::is_same_v<T, float>) {
      out[i] = v;
    } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      out[i] = __float2bfloat16(v);
    } else {
      out[i] = __float2half(v);
    }
  }
}

}  // namespace

void launch_random_fill(void* out, DType dtype, int64_t n, uint64_t seed, float mean, float std, RandomWindow window,
                        cudaStream_t stream) {
  if (n == 0) return;
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, 132 * 16));
  switch (dtype) {
    case DType::f32:
      random_fill<<<blocks, threads, 0, stream>>>(static_cast<float*>(out), n, seed, mean, std, window);
      break;
    case DType::bf16:
      random_fill<<<blocks, threads, 0, stream>>>(static_cast<__nv_bfloat16*>(out), n, seed, mean, std, window);
      break;
    case DType::f16:
      random_fill<<<blocks, threads, 0, stream>>>(static_cast<__half*>(out), n, seed, mean, std, window);
      break;
    default:
      throw std::invalid_argument("random_fill: not a floating type");
  }
  TROUPE_CUDA_CHECK_LAUNCH(random_fill);
}

}  // namespace troupe::cuda
