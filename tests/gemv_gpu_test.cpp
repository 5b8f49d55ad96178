// kernels/gemv.cu against a CPU dot product in f32 over the same bf16 values: every token count it
// takes (1–8), the one-row and four-row warp shapes, row counts that leave a partial warp, bias or
// none; and it declines, launching nothing, what it does not handle (k not a multiple of 8,
// misaligned pointers, more than 8 tokens), so the caller falls back to cuBLASLt.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/activation.cuh"
#include "kernels/cuda_backend.hpp"
#include "kernels/gemv.cuh"
#include "tests/gpu_compare.hpp"

namespace troupe {
namespace {

struct DeviceBuffer {
  void* p = nullptr;
  explicit DeviceBuffer(size_t bytes) { EXPECT_EQ(cudaMalloc(&p, bytes), cudaSuccess); }
  ~DeviceBuffer() { cudaFree(p); }
  template <class T>
  T* as(size_t offset_bytes = 0) const {
    return reinterpret_cast<T*>(static_cast<char*>(p) + offset_bytes);
  }
};

std::vector<uint16_t> random_bf16(int64_t n, uint32_t seed) {
  std::vector<uint16_t> out(static_cast<size_t>(n));
  const std::vector<float> v = test::random_values(n, seed);
  for (size_t i = 0; i < out.size(); ++i) out[i] = f32_to_bf16(v[i]);
  return out;
}

void check(int64_t tokens, int64_t n, int64_t k, bool with_bias) {
  SCOPED_TRACE("tokens " + std::to_string(tokens) + ", n " + std::to_string(n) + ", k " + std::to_string(k) +
               (with_bias ? ", bias" : ""));
  const auto x = random_bf16(tokens * k, 1), w = random_bf16(n * k, 2), bias = random_bf16(n, 3);
  DeviceBuffer dx(x.size() * 2), dw(w.size() * 2), db(bias.size() * 2), dout(tokens * n * 2);
  cudaMemcpy(dx.p, x.data(), x.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dw.p, w.data(), w.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(db.p, bias.data(), bias.size() * 2, cudaMemcpyHostToDevice);
  cudaMemset(dout.p, 0xff, tokens * n * 2);  // NaN everywhere: an output never written shows
  ASSERT_TRUE(cuda::small_batch_linear(dx.as<__nv_bfloat16>(), dw.as<__nv_bfloat16>(),
                                       with_bias ? db.as<__nv_bfloat16>() : nullptr, dout.as<__nv_bfloat16>(), tokens,
                                       n, k, nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<uint16_t> got(static_cast<size_t>(tokens * n));
  cudaMemcpy(got.data(), dout.p, got.size() * 2, cudaMemcpyDeviceToHost);
  double worst = 0;
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t r = 0; r < n; ++r) {
      double want = with_bias ? bf16_to_f32(bias[r]) : 0.0;
      double scale = std::fabs(want);
      for (int64_t i = 0; i < k; ++i) {
        const double p = double(bf16_to_f32(x[t * k + i])) * bf16_to_f32(w[r * k + i]);
        want += p;
        scale += std::fabs(p);
      }
      const float g = bf16_to_f32(got[t * n + r]);
      ASSERT_FALSE(std::isnan(g)) << "out[" << t << ", " << r << "] not written";
      // Against the sum of magnitudes: a dot product's rounding scales with it, not with the result.
      worst = std::max(worst, std::fabs(g - want) / std::max(scale, 1e-6));
    }
  EXPECT_LE(worst, 1e-2);
}

TEST(GemvGpu, MatchesCpuForEveryTokenCountAndShape) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: run on the GPU machine";
  for (int64_t tokens = 1; tokens <= cuda::kGemvMaxTokens; ++tokens) {
    check(tokens, 1, 8, false);
    check(tokens, 37, 264, true);       // a partial warp of rows, k not a multiple of 256
    check(tokens, 1024, 2048, false);   // qwen3-0.6b's o_proj at tp1: one row per warp
    check(tokens, 9000, 128, true);     // wide enough for four rows per warp, the last group partial
  }
  check(1, 4096, 4096, false);
}

// The fused SwiGLU + down projection gives bit for bit what silu_mul and then the GEMV give: the
// activation rounds to the same bf16 and the sums run in the same order.
TEST(GemvGpu, FusedSiluMulLinearEqualsTheTwoKernels) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: run on the GPU machine";
  struct Case {
    int64_t tokens, n, k;
  };
  // qwen3-0.6b's down projection, llama-3.1-8b's (28 KiB of staged activation at one token), odd rows.
  const Case cases[] = {{1, 1024, 3072}, {3, 1024, 3072}, {8, 300, 1024}, {1, 4096, 14336}, {2, 37, 264}};
  for (const Case& c : cases) {
    SCOPED_TRACE("tokens " + std::to_string(c.tokens) + ", n " + std::to_string(c.n) + ", k " + std::to_string(c.k));
    const auto gate_up = random_bf16(c.tokens * 2 * c.k, 4), w = random_bf16(c.n * c.k, 5);
    DeviceBuffer dg(gate_up.size() * 2), dw(w.size() * 2), dact(c.tokens * c.k * 2), d1(c.tokens * c.n * 2),
        d2(c.tokens * c.n * 2);
    cudaMemcpy(dg.p, gate_up.data(), gate_up.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(dw.p, w.data(), w.size() * 2, cudaMemcpyHostToDevice);
    cudaMemset(d1.p, 0xff, c.tokens * c.n * 2);
    ASSERT_TRUE(cuda::small_batch_silu_mul_linear(dg.as<__nv_bfloat16>(), dw.as<__nv_bfloat16>(),
                                                  d1.as<__nv_bfloat16>(), c.tokens, c.n, c.k, nullptr));
    cuda::silu_mul(dg.as<__nv_bfloat16>(), dact.as<__nv_bfloat16>(), c.tokens, c.k, nullptr);
    ASSERT_TRUE(cuda::small_batch_linear(dact.as<__nv_bfloat16>(), dw.as<__nv_bfloat16>(), nullptr,
                                         d2.as<__nv_bfloat16>(), c.tokens, c.n, c.k, nullptr));
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<uint16_t> fused(static_cast<size_t>(c.tokens * c.n)), apart(fused.size());
    cudaMemcpy(fused.data(), d1.p, fused.size() * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(apart.data(), d2.p, apart.size() * 2, cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < fused.size(); ++i) ASSERT_EQ(fused[i], apart[i]) << "output " << i;
  }
  // More activation than a block's shared memory without opting in: declined, for the two kernels.
  DeviceBuffer buf(1 << 20);
  EXPECT_FALSE(cuda::small_batch_silu_mul_linear(buf.as<__nv_bfloat16>(), buf.as<__nv_bfloat16>(), buf.as<__nv_bfloat16>(),
                                                 2, 16, 14336, nullptr));
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

TEST(GemvGpu, DeclinesWhatItDoesNotHandle) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: run on the GPU machine";
  DeviceBuffer buf(1 << 20);
  auto* x = buf.as<__nv_bfloat16>(), *w = buf.as<__nv_bfloat16>(4096), *out = buf.as<__nv_bfloat16>(8192);
  EXPECT_FALSE(cuda::small_batch_linear(x, w, nullptr, out, 9, 16, 64, nullptr)) << "9 tokens";
  EXPECT_FALSE(cuda::small_batch_linear(x, w, nullptr, out, 1, 16, 60, nullptr)) << "k = 60";
  auto* x_off = buf.as<__nv_bfloat16>(2), *w_off = buf.as<__nv_bfloat16>(4098);
  EXPECT_FALSE(cuda::small_batch_linear(x_off, w, nullptr, out, 1, 16, 64, nullptr)) << "x + 2 bytes";
  EXPECT_FALSE(cuda::small_batch_linear(x, w_off, nullptr, out, 1, 16, 64, nullptr)) << "w + 2 bytes";
  EXPECT_FALSE(cuda::small_batch_linear(x, w, nullptr, out, 0, 16, 64, nullptr)) << "no token";
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

}  // namespace
}  // namespace troupe
