// Small-batch linear layers: kernels/gemv.cu against the cuBLASLt path (kernels/gemm.cpp) on the
// shapes of the models' decode steps, both in the same run:
//   nvcc -std=c++20 -O2 -gencode=arch=compute_90a,code=sm_90a -I. tools/gemv_bench.cu kernels/gemv.cu \
//        kernels/gemm.cpp kernels/elementwise.cu -lcublasLt -lcublas -o gemv_bench
// A decode step reads each weight once, cold: the weights of one call rotate over copies that
// together exceed the L2 cache, so neither kernel reads from it. Calls are captured in a CUDA graph
// of 64 launches (as decode steps are replayed), so the time per call includes what a graph node
// costs. The floor is the weight bytes over the bandwidth of a device-to-device copy in this run.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <vector>

#include "kernels/cuda_check.hpp"
#include "tools/device_fill.cuh"
#include "kernels/gemm.hpp"
#include "kernels/gemv.cuh"

namespace {

using bf16 = __nv_bfloat16;

// Median µs per launch of `launch(i)` over graphs of kPerGraph launches.
float graph_us(cudaStream_t stream, const std::function<void(int)>& launch) {
  constexpr int kPerGraph = 64;
  cudaGraph_t graph;
  TROUPE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < kPerGraph; ++i) launch(i);
  TROUPE_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec;
  TROUPE_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t a, b;
  TROUPE_CUDA_CHECK(cudaEventCreate(&a));
  TROUPE_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) TROUPE_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  std::vector<float> t;
  for (int r = 0; r < 15; ++r) {
    TROUPE_CUDA_CHECK(cudaEventRecord(a, stream));
    TROUPE_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    TROUPE_CUDA_CHECK(cudaEventRecord(b, stream));
    TROUPE_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    TROUPE_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1000.0f / kPerGraph);
  }
  std::sort(t.begin(), t.end());
  cudaEventDestroy(a), cudaEventDestroy(b);
  cudaGraphExecDestroy(exec), cudaGraphDestroy(graph);
  return t[t.size() / 2];
}

struct Shape {
  const char* name;
  int64_t n, k;
};

}  // namespace

int main() {
  cudaDeviceProp prop{};
  TROUPE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t stream;
  TROUPE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  const size_t copy_bytes = size_t{1} << 31;
  void *src, *dst;
  TROUPE_CUDA_CHECK(cudaMalloc(&src, copy_bytes));
  TROUPE_CUDA_CHECK(cudaMalloc(&dst, copy_bytes));
  TROUPE_CUDA_CHECK(cudaMemset(src, 1, copy_bytes));
  const float copy_us = graph_us(stream, [&](int) {
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice, stream));
  });
  const double copy_gbps = 2.0 * copy_bytes / (copy_us * 1e-6) / 1e9;
  cudaFree(src), cudaFree(dst);
  std::printf("%s, L2 %d MB: device-to-device copy %.0f GB/s (read + write)\n", prop.name, prop.l2CacheSize >> 20,
              copy_gbps);
  std::printf("%-24s %6s %5s %9s %9s %9s %8s %8s %9s\n", "shape (n x k)", "MB", "tok", "floor us", "cublasLt",
              "gemv us", "cublas%", "gemv%", "gemv/cub");

  const Shape shapes[] = {
      {"qwen3-0.6b qkv", 4096, 1024},     {"qwen3-0.6b o", 1024, 2048},
      {"qwen3-0.6b gate_up", 6144, 1024}, {"qwen3-0.6b down", 1024, 3072},
      {"qwen3-0.6b lm_head", 151936, 1024}, {"llama-8b qkv", 6144, 4096},
      {"llama-8b o", 4096, 4096},         {"llama-8b gate_up", 28672, 4096},
      {"llama-8b down", 4096, 14336},     {"llama-8b lm_head", 128256, 4096},
      {"llama-8b/2 qkv", 3072, 4096},     {"llama-8b/2 o", 4096, 2048},
      {"llama-8b/2 gate_up", 14336, 4096}, {"llama-8b/2 down", 4096, 7168},
      {"llama-8b/4 qkv", 1536, 4096},     {"llama-8b/4 o", 4096, 1024},
      {"llama-8b/4 gate_up", 7168, 4096}, {"llama-8b/4 down", 4096, 3584},
  };
  troupe::cuda::Gemm gemm;
  const size_t l2 = static_cast<size_t>(prop.l2CacheSize);
  for (const Shape& s : shapes) {
    const size_t w_elems = static_cast<size_t>(s.n * s.k);
    // Enough copies that one graph's 64 calls never find their weights in L2.
    const int copies = static_cast<int>(std::clamp<size_t>(3 * l2 / (w_elems * 2) + 1, 1, 64));
    std::vector<bf16*> w(copies);
    for (int c = 0; c < copies; ++c) {
      TROUPE_CUDA_CHECK(cudaMalloc(&w[c], w_elems * 2));
      fill_random<<<1024, 256, 0, stream>>>(w[c], w_elems, 11u + c);
    }
    bf16 *x, *out;
    TROUPE_CUDA_CHECK(cudaMalloc(&x, 8 * s.k * 2));
    TROUPE_CUDA_CHECK(cudaMalloc(&out, 8 * s.n * 2));
    fill_random<<<64, 256, 0, stream>>>(x, 8 * s.k, 7);
    for (int tokens : {1, 2, 4, 8}) {
      const float cub = graph_us(stream, [&](int i) {
        gemm.linear(x, w[i % copies], nullptr, out, tokens, s.n, s.k, stream);
      });
      bool ran = true;
      const float ours = graph_us(stream, [&](int i) {
        ran = troupe::cuda::small_batch_linear(x, w[i % copies], nullptr, out, tokens, s.n, s.k, stream) && ran;
      });
      const double mb = w_elems * 2 / 1e6;
      const double floor_us = w_elems * 2 / (copy_gbps * 1e3);
      std::printf("%-24s %6.1f %5d %9.2f %9.2f %9.2f %7.0f%% %7.0f%% %9.2f%s\n", s.name, mb, tokens, floor_us, cub,
                  ours, 100 * floor_us / cub, 100 * floor_us / ours, ours / cub, ran ? "" : "  (gemv declined)");
    }
    for (bf16* p : w) cudaFree(p);
    cudaFree(x), cudaFree(out);
  }
  return 0;
}
