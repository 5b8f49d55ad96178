#include "kernels/ceilings.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "kernels/cuda_check.hpp"

namespace troupe {
namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

double measure_copy_bandwidth(int device) {
  TROUPE_CUDA_CHECK(cudaSetDevice(device));
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  TROUPE_CUDA_CHECK(cudaMalloc(&a, bytes));
  TROUPE_CUDA_CHECK(cudaMalloc(&b, bytes));
  TROUPE_CUDA_CHECK(cudaMemset(a, 1, bytes));
  cudaEvent_t start, stop;
  TROUPE_CUDA_CHECK(cudaEventCreate(&start));
  TROUPE_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> rates;
  for (int i = 0; i < 7; ++i) {
    TROUPE_CUDA_CHECK(cudaEventRecord(start));
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
    TROUPE_CUDA_CHECK(cudaEventRecord(stop));
    TROUPE_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    TROUPE_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (i > 0) rates.push_back(2.0 * bytes / (ms * 1e-3));
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(a);
  cudaFree(b);
  return median(rates);
}

double measure_gemm_rate(Backend& backend, int n) {
  Tensor x = backend.allocate({n, n}, backend.compute_dtype());
  Tensor w = backend.allocate({n, n}, backend.compute_dtype());
  Tensor out = backend.allocate({n, n}, backend.compute_dtype());
  backend.fill_random(x, 1, 0.0f, 1.0f);
  backend.fill_random(w, 2, 0.0f, 1.0f);
  std::vector<double> rates;
  for (int i = 0; i < 8; ++i) {
    backend.synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    backend.linear(x, w, nullptr, out);
    backend.synchronize();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i > 1) rates.push_back(2.0 * n * static_cast<double>(n) * n / s);
  }
  return median(rates);
}

}  // namespace troupe
