// kernels/gemv.cu against a CPU dot product in f32 over the same bf16 values: every token count it
// takes (1–8), the one-row and four-row warp shapes, row counts that leave a partial warp, bias or
// none; its fused inputs (RMSNorm, SwiGLU) and residual add bit for bit against the kernels they
// replace; and it declines, launching nothing, what it does not handle (k not a multiple of 8,
// misaligned pointers, more than 8 tokens), so the caller falls back to cuBLASLt.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/activation.cuh"
#include "kernels/cuda_backend.hpp"
#include "kernels/elementwise.cuh"
#include "kernels/gemv.cuh"
#include "kernels/rmsnorm.cuh"
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
  check(1, 4096, 4096, false);       // four rows per warp from 4096 rows
  check(1, 4096, 2048, false);       // four whole rows per warp loaded before the wait (1024 < k ≤ 2048)
  check(1, 3102, 1536, true);        // the same, the last group of rows partial
  check(1, 1536, 4096, true);        // one row per warp, the whole row loaded before the wait (k ≤ 4096)
  check(1, 1000, 3592, false);       // the same, k not a multiple of 256
  check(1, 40000, 512, true);  // an LM head's shape (vocabulary-wide, short rows)
}

// The fused SwiGLU + down projection gives bit for bit what silu_mul and then the GEMV give: the
// activation rounds to the same bf16 and the sums run in the same order.
TEST(GemvGpu, FusedSiluMulLinearEqualsTheTwoKernels) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: run on the GPU machine";
  struct Case {
    int64_t tokens, n, k;
  };
  // qwen3-0.6b's down projection, llama-3.1-8b's (28 KiB of staged activation at one token), odd rows.
  const Case cases[] = {{1, 1024, 3072}, {3, 1024, 3072}, {8, 300, 1024}, {1, 4096, 14336}, {2, 37, 264},
                        {1, 4096, 3584}, {1, 1000, 3584}};
  for (const Case& c : cases) {
    SCOPED_TRACE("tokens " + std::to_string(c.tokens) + ", n " + std::to_string(c.n) + ", k " + std::to_string(c.k));
    const auto gate_up = random_bf16(c.tokens * 2 * c.k, 4), w = random_bf16(c.n * c.k, 5);
    DeviceBuffer dg(gate_up.size() * 2), dw(w.size() * 2), dact(c.tokens * c.k * 2), d1(c.tokens * c.n * 2),
        d2(c.tokens * c.n * 2);
    cudaMemcpy(dg.p, gate_up.data(), gate_up.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(dw.p, w.data(), w.size() * 2, cudaMemcpyHostToDevice);
    cudaMemset(d1.p, 0xff, c.tokens * c.n * 2);
    cuda::GemvCall call;
    call.x = dg.as<__nv_bfloat16>(), call.w = dw.as<__nv_bfloat16>(), call.out = d1.as<__nv_bfloat16>();
    call.tokens = c.tokens, call.n = c.n, call.k = c.k, call.input = cuda::GemvInput::silu_mul;
    ASSERT_TRUE(cuda::small_batch_gemv(call, nullptr));
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
  cuda::GemvCall big;
  big.x = big.w = buf.as<__nv_bfloat16>(), big.out = buf.as<__nv_bfloat16>();
  big.tokens = 2, big.n = 16, big.k = 14336, big.input = cuda::GemvInput::silu_mul;
  EXPECT_FALSE(cuda::small_batch_gemv(big, nullptr));
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

std::vector<uint16_t> download(const DeviceBuffer& d, int64_t n) {
  std::vector<uint16_t> out(static_cast<size_t>(n));
  cudaMemcpy(out.data(), d.p, out.size() * 2, cudaMemcpyDeviceToHost);
  return out;
}

// The RMSNorm computed in the projection's blocks gives bit for bit what the rms_norm kernel and then
// the GEMV give: the same sums in the same order (for k = 4096 and 3072 the norm kernel has more
// threads than the GEMV's block, which plays them), the same rounding.
TEST(GemvGpu, FusedRmsNormLinearEqualsTheTwoKernels) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: run on the GPU machine";
  struct Case {
    int64_t tokens, n, k;
  };
  // qwen3-0.6b's qkv, llama-3.1-8b's, a 3072-wide norm with four rows per warp, tokens of odd
  // widths, and the most tokens.
  const Case cases[] = {{1, 4096, 1024}, {1, 6144, 4096}, {2, 9000, 3072}, {3, 300, 2048}, {1, 37, 264}, {8, 64, 1024},
                        {1, 1536, 4096}, {1, 7168, 4096}};
  for (const Case& c : cases) {
    SCOPED_TRACE("tokens " + std::to_string(c.tokens) + ", n " + std::to_string(c.n) + ", k " + std::to_string(c.k));
    auto x = random_bf16(c.tokens * c.k, 6), w = random_bf16(c.n * c.k, 7), g = random_bf16(c.k, 8),
         bias = random_bf16(c.n, 9);
    for (auto& v : g) v = f32_to_bf16(1.0f + 0.25f * bf16_to_f32(v));  // norm weights near 1, as trained ones are
    DeviceBuffer dx(x.size() * 2), dw(w.size() * 2), dg(g.size() * 2), db(bias.size() * 2), dnormed(x.size() * 2),
        d1(c.tokens * c.n * 2), d2(c.tokens * c.n * 2);
    cudaMemcpy(dx.p, x.data(), x.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(dw.p, w.data(), w.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(dg.p, g.data(), g.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(db.p, bias.data(), bias.size() * 2, cudaMemcpyHostToDevice);
    cudaMemset(d1.p, 0xff, c.tokens * c.n * 2);
    cuda::GemvCall fused;
    fused.x = dx.as<__nv_bfloat16>(), fused.w = dw.as<__nv_bfloat16>(), fused.bias = db.as<__nv_bfloat16>();
    fused.out = d1.as<__nv_bfloat16>(), fused.tokens = c.tokens, fused.n = c.n, fused.k = c.k;
    fused.input = cuda::GemvInput::rms_norm, fused.norm_weight = dg.as<__nv_bfloat16>(), fused.eps = 1e-6f;
    ASSERT_TRUE(cuda::small_batch_gemv(fused, nullptr));
    cuda::rms_norm(dx.as<__nv_bfloat16>(), dg.as<__nv_bfloat16>(), dnormed.as<__nv_bfloat16>(), c.tokens, c.k, 1e-6f,
                   nullptr);
    ASSERT_TRUE(cuda::small_batch_linear(dnormed.as<__nv_bfloat16>(), dw.as<__nv_bfloat16>(), db.as<__nv_bfloat16>(),
                                         d2.as<__nv_bfloat16>(), c.tokens, c.n, c.k, nullptr));
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const auto fused_out = download(d1, c.tokens * c.n), apart = download(d2, c.tokens * c.n);
    for (size_t i = 0; i < fused_out.size(); ++i) ASSERT_EQ(fused_out[i], apart[i]) << "output " << i;
  }
}

// add_to_out: the residual gets what the projection and then the add kernel give it, bit for bit,
// for a plain and a SwiGLU input.
TEST(GemvGpu, ResidualAddEqualsLinearThenAdd) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: run on the GPU machine";
  for (const bool gated : {false, true}) {
    for (const int64_t tokens : {int64_t{1}, int64_t{5}}) {
      const int64_t n = 1024, k = 2048, in_width = gated ? 2 * k : k;
      SCOPED_TRACE(std::string(gated ? "silu_mul" : "plain") + ", tokens " + std::to_string(tokens));
      const auto x = random_bf16(tokens * in_width, 10), w = random_bf16(n * k, 11), resid = random_bf16(tokens * n, 12),
                 bias = random_bf16(n, 13);
      DeviceBuffer dx(x.size() * 2), dw(w.size() * 2), db(bias.size() * 2), dact(tokens * k * 2), ddelta(tokens * n * 2),
          d1(tokens * n * 2), d2(tokens * n * 2);
      cudaMemcpy(dx.p, x.data(), x.size() * 2, cudaMemcpyHostToDevice);
      cudaMemcpy(dw.p, w.data(), w.size() * 2, cudaMemcpyHostToDevice);
      cudaMemcpy(db.p, bias.data(), bias.size() * 2, cudaMemcpyHostToDevice);
      cudaMemcpy(d1.p, resid.data(), resid.size() * 2, cudaMemcpyHostToDevice);
      cudaMemcpy(d2.p, resid.data(), resid.size() * 2, cudaMemcpyHostToDevice);
      cuda::GemvCall fused;
      fused.x = dx.as<__nv_bfloat16>(), fused.w = dw.as<__nv_bfloat16>(), fused.out = d1.as<__nv_bfloat16>();
      fused.bias = gated ? nullptr : db.as<__nv_bfloat16>();
      fused.tokens = tokens, fused.n = n, fused.k = k, fused.add_to_out = true;
      fused.input = gated ? cuda::GemvInput::silu_mul : cuda::GemvInput::plain;
      ASSERT_TRUE(cuda::small_batch_gemv(fused, nullptr));
      const __nv_bfloat16* in = dx.as<__nv_bfloat16>();
      if (gated) {
        cuda::silu_mul(dx.as<__nv_bfloat16>(), dact.as<__nv_bfloat16>(), tokens, k, nullptr);
        in = dact.as<__nv_bfloat16>();
      }
      ASSERT_TRUE(cuda::small_batch_linear(in, dw.as<__nv_bfloat16>(), fused.bias, ddelta.as<__nv_bfloat16>(), tokens, n,
                                           k, nullptr));
      cuda::add(ddelta.as<__nv_bfloat16>(), d2.as<__nv_bfloat16>(), tokens * n, nullptr);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const auto fused_out = download(d1, tokens * n), apart = download(d2, tokens * n);
      int64_t changed = 0;
      for (size_t i = 0; i < fused_out.size(); ++i) {
        ASSERT_EQ(fused_out[i], apart[i]) << "output " << i;
        changed += fused_out[i] != resid[i];
      }
      EXPECT_GT(changed, tokens * n / 2) << "the residual should have moved";
    }
  }
}

// A one-token projection of a big weight streams through shared memory (kernels/stream_gemv.cu)
// and gives the register kernel's bits: every input (plain, RMSNorm, SwiGLU) and output (store, add),
// bias or none, chunks of whole rows (k = 1024 and 256), of one row (4096) and of part of one (7168,
// 8448: two and eleven chunks a row), a warp's run of more than 32 rows (its epilogue loads past the
// first 32), and row counts that split unevenly over the warps.
TEST(GemvGpu, StreamingGivesTheRegisterKernelsBits) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: run on the GPU machine";
  struct Case {
    int64_t n, k;
    cuda::GemvInput input;
    bool add, bias;
  };
  const Case cases[] = {
      {4096, 7168, cuda::GemvInput::silu_mul, false, false},  // llama-3.1-8b's tp2 down
      {4096, 7168, cuda::GemvInput::silu_mul, true, false},
      {16640, 4096, cuda::GemvInput::rms_norm, false, true},  // above 64 MiB: any input
      {8500, 4096, cuda::GemvInput::plain, true, true},
      {1000, 8448, cuda::GemvInput::silu_mul, false, true},
      {8195, 1024, cuda::GemvInput::silu_mul, true, false},
      {70000, 256, cuda::GemvInput::silu_mul, true, true},  // 33 or 34 rows a warp
  };
  for (const Case& c : cases) {
    SCOPED_TRACE("n " + std::to_string(c.n) + ", k " + std::to_string(c.k) + ", input " +
                 std::to_string(static_cast<int>(c.input)) + (c.add ? ", add" : "") + (c.bias ? ", bias" : ""));
    ASSERT_TRUE(cuda::stream_gemv_takes(1, c.n, c.k, c.input)) << "not a streaming shape";
    const int64_t width = c.input == cuda::GemvInput::silu_mul ? 2 * c.k : c.k;
    const auto x = random_bf16(width, 14), w = random_bf16(c.n * c.k, 15), bias = random_bf16(c.n, 16),
               resid = random_bf16(c.n, 17);
    auto g = random_bf16(c.k, 18);
    for (auto& v : g) v = f32_to_bf16(1.0f + 0.25f * bf16_to_f32(v));
    DeviceBuffer dx(x.size() * 2), dw(w.size() * 2), db(bias.size() * 2), dg(g.size() * 2), d1(c.n * 2), d2(c.n * 2);
    cudaMemcpy(dx.p, x.data(), x.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(dw.p, w.data(), w.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(db.p, bias.data(), bias.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(dg.p, g.data(), g.size() * 2, cudaMemcpyHostToDevice);
    for (const DeviceBuffer* d : {&d1, &d2}) {
      if (c.add)
        cudaMemcpy(d->p, resid.data(), resid.size() * 2, cudaMemcpyHostToDevice);
      else
        cudaMemset(d->p, 0xff, c.n * 2);  // NaN: an output never written shows
    }
    cuda::GemvCall call;
    call.x = dx.as<__nv_bfloat16>(), call.w = dw.as<__nv_bfloat16>(), call.bias = c.bias ? db.as<__nv_bfloat16>() : nullptr;
    call.tokens = 1, call.n = c.n, call.k = c.k, call.input = c.input, call.add_to_out = c.add;
    call.norm_weight = dg.as<__nv_bfloat16>(), call.eps = 1e-6f;
    call.out = d1.as<__nv_bfloat16>();
    ASSERT_TRUE(cuda::small_batch_gemv(call, nullptr));
    call.out = d2.as<__nv_bfloat16>(), call.stream = false;
    ASSERT_TRUE(cuda::small_batch_gemv(call, nullptr));
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const auto streamed = download(d1, c.n), registers = download(d2, c.n);
    int64_t written = 0;
    for (int64_t i = 0; i < c.n; ++i) {
      ASSERT_EQ(streamed[i], registers[i]) << "output " << i;
      written += !std::isnan(bf16_to_f32(streamed[i])) && streamed[i] != resid[i];
    }
    EXPECT_GT(written, c.n * 9 / 10) << "outputs left as they were";
  }
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
