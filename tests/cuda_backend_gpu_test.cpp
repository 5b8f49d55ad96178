// The CUDA backend against the CPU reference on random inputs. Inputs are rounded to bf16 before
// either backend sees them, so only the precision of the computation differs (bf16 storage of
// outputs, f32 math); the check is ‖gpu − cpu‖ / ‖cpu‖ ≤ 1e-2 with every output finite. GPU outputs
// are poisoned with NaN first, and most cases keep a poisoned guard row after the output, so that an
// element left unwritten, or written out of bounds, fails.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/cpu_backend.hpp"
#include "engine/dtype.hpp"
#include "kernels/cuda_backend.hpp"
#include "tests/gpu_compare.hpp"

namespace troupe {
namespace {

using Shape = std::vector<int64_t>;

constexpr float eps = 1e-6f;

using test::count_of;
using test::expect_close;
using test::expect_equal;
using test::expect_untouched;
using test::random_values;
using test::read;

class CudaBackendTest : public ::testing::Test {
 protected:
  // One backend for the whole suite: a cuBLASLt handle and workspace per test would only add time.
  static void TearDownTestSuite() { gpu_.reset(); }

  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: run on the GPU machine (tools/gpu_smoke.sh)";
    if (!gpu_) gpu_ = make_cuda_backend(0);
  }

  // The same values on both backends: bf16 on the GPU, f32 on the CPU.
  Tensor gpu_tensor(const std::vector<float>& v, const Shape& shape) {
    Tensor t = gpu_->allocate(shape, DType::bf16);
    gpu_->upload(HostView{v.data(), DType::f32, shape}, t);
    return t;
  }
  Tensor cpu_tensor(const std::vector<float>& v, const Shape& shape) {
    Tensor t = cpu_->allocate(shape, DType::f32);
    cpu_->upload(HostView{v.data(), DType::f32, shape}, t);
    return t;
  }
  Tensor poisoned_gpu(const Shape& shape) { return test::poisoned_bf16(*gpu_, shape); }
  Tensor ids_on(Backend& backend, const std::vector<int32_t>& ids) {
    Tensor t = backend.allocate({static_cast<int64_t>(ids.size())}, DType::i32);
    backend.upload(HostView{ids.data(), DType::i32, {static_cast<int64_t>(ids.size())}}, t);
    return t;
  }

  // A view of `rows` × `width` bf16 values that starts 2 bytes into its allocation, so that no
  // 16-byte (or 4-byte) access path can be taken.
  Tensor misaligned_gpu(const std::vector<float>& v, int64_t rows, int64_t width) {
    std::vector<float> padded(1, 0.0f);
    padded.insert(padded.end(), v.begin(), v.end());
    Tensor whole = gpu_tensor(padded, {rows * width + 1});
    return whole.rows(1, rows * width + 1).reshape({rows, width});
  }

  static inline std::unique_ptr<Backend> gpu_;
  std::unique_ptr<Backend> cpu_ = make_cpu_backend();
};

const int64_t norm_widths[] = {7, 64, 1000, 1001, 1024, 4096, 4099, 5120};
const int64_t norm_rows[] = {1, 3, 17, 256};

TEST_F(CudaBackendTest, RmsNormMatchesCpu) {
  for (int64_t width : norm_widths) {
    for (int64_t rows : norm_rows) {
      const std::string what = "rms_norm rows " + std::to_string(rows) + " width " + std::to_string(width);
      const uint32_t seed = static_cast<uint32_t>(width * 1000 + rows);
      const auto x = random_values(rows * width, seed);
      const auto w = random_values(width, seed + 7, 1.0f, 0.5f);

      Tensor out_cpu = cpu_->allocate({rows, width}, DType::f32);
      cpu_->rms_norm(cpu_tensor(x, {rows, width}), cpu_tensor(w, {width}), eps, out_cpu);

      Tensor out_gpu = poisoned_gpu({rows + 1, width});
      gpu_->rms_norm(gpu_tensor(x, {rows, width}), gpu_tensor(w, {width}), eps, out_gpu.rows(0, rows));
      expect_close(read(*gpu_, out_gpu.rows(0, rows)), read(*cpu_, out_cpu), what);
      expect_untouched(read(*gpu_, out_gpu.rows(rows, rows + 1)), what);
    }
  }
}

TEST_F(CudaBackendTest, RmsNormInPlaceAndMisaligned) {
  const int64_t rows = 5, width = 1024;
  const auto x = random_values(rows * width, 11);
  const auto w = random_values(width, 12, 1.0f, 0.5f);
  Tensor ref = cpu_->allocate({rows, width}, DType::f32);
  cpu_->rms_norm(cpu_tensor(x, {rows, width}), cpu_tensor(w, {width}), eps, ref);

  Tensor in_place = gpu_tensor(x, {rows, width});
  gpu_->rms_norm(in_place, gpu_tensor(w, {width}), eps, in_place);
  expect_close(read(*gpu_, in_place), read(*cpu_, ref), "rms_norm in place");

  // A width that allows 16-byte accesses but rows that start 2 bytes off: the scalar path.
  Tensor shifted = misaligned_gpu(x, rows, width);
  Tensor out = poisoned_gpu({rows, width});
  gpu_->rms_norm(shifted, gpu_tensor(w, {width}), eps, out);
  expect_close(read(*gpu_, out), read(*cpu_, ref), "rms_norm on a misaligned view");
}

TEST_F(CudaBackendTest, AddRmsNormMatchesCpuInBothOutputs) {
  for (int64_t width : norm_widths) {
    for (int64_t rows : norm_rows) {
      const std::string what = "add_rms_norm rows " + std::to_string(rows) + " width " + std::to_string(width);
      const uint32_t seed = static_cast<uint32_t>(width * 1000 + rows + 500);
      const auto residual = random_values(rows * width, seed);
      const auto x = random_values(rows * width, seed + 1);
      const auto w = random_values(width, seed + 2, 1.0f, 0.5f);

      Tensor residual_cpu = cpu_tensor(residual, {rows, width});
      Tensor out_cpu = cpu_->allocate({rows, width}, DType::f32);
      cpu_->add_rms_norm(residual_cpu, cpu_tensor(x, {rows, width}), cpu_tensor(w, {width}), eps, out_cpu);

      Tensor residual_gpu = gpu_tensor(residual, {rows, width});
      Tensor out_gpu = poisoned_gpu({rows + 1, width});
      gpu_->add_rms_norm(residual_gpu, gpu_tensor(x, {rows, width}), gpu_tensor(w, {width}), eps,
                         out_gpu.rows(0, rows));
      expect_close(read(*gpu_, out_gpu.rows(0, rows)), read(*cpu_, out_cpu), what + ", out");
      expect_close(read(*gpu_, residual_gpu), read(*cpu_, residual_cpu), what + ", residual");
      expect_untouched(read(*gpu_, out_gpu.rows(rows, rows + 1)), what);
    }
  }
}

struct LinearCase {
  int64_t tokens, n, k;
};

TEST_F(CudaBackendTest, LinearMatchesCpu) {
  // 97 × 61: neither dimension a multiple of 8, so rows are only 2-byte aligned. cuBLASLt takes any
  // size once told the real alignment (kernels/gemm.cpp); these cases prove it on the device.
  const LinearCase cases[] = {{1, 64, 64},     {7, 64, 64},       {128, 64, 64},   {1, 896, 896},     {7, 896, 896},
                              {128, 896, 896}, {1, 1024, 4096},   {7, 1024, 4096}, {128, 1024, 4096}, {1, 4096, 1024},
                              {7, 4096, 1024}, {128, 4096, 1024}, {1, 97, 61},     {7, 97, 61},       {128, 97, 61}};
  for (const LinearCase& c : cases) {
    for (bool with_bias : {false, true}) {
      const std::string what = "linear T " + std::to_string(c.tokens) + " N " + std::to_string(c.n) + " K " +
                               std::to_string(c.k) + (with_bias ? " with bias" : "");
      SCOPED_TRACE(what);
      const uint32_t seed = static_cast<uint32_t>(c.tokens * 7919 + c.n * 31 + c.k + (with_bias ? 1 : 0));
      const auto x = random_values(c.tokens * c.k, seed);
      const auto w = random_values(c.n * c.k, seed + 1, 0.0f, 1.0f / std::sqrt(static_cast<float>(c.k)));
      const auto b = random_values(c.n, seed + 2);

      Tensor out_cpu = cpu_->allocate({c.tokens, c.n}, DType::f32);
      Tensor b_cpu = cpu_tensor(b, {c.n});
      cpu_->linear(cpu_tensor(x, {c.tokens, c.k}), cpu_tensor(w, {c.n, c.k}), with_bias ? &b_cpu : nullptr, out_cpu);

      Tensor out_gpu = poisoned_gpu({c.tokens + 1, c.n});
      Tensor b_gpu = gpu_tensor(b, {c.n});
      gpu_->linear(gpu_tensor(x, {c.tokens, c.k}), gpu_tensor(w, {c.n, c.k}), with_bias ? &b_gpu : nullptr,
                   out_gpu.rows(0, c.tokens));
      expect_close(read(*gpu_, out_gpu.rows(0, c.tokens)), read(*cpu_, out_cpu), what);
      expect_untouched(read(*gpu_, out_gpu.rows(c.tokens, c.tokens + 1)), what);
    }
  }
}

TEST_F(CudaBackendTest, LinearOnMisalignedViewsAndReusedPlans) {
  // x, out and bias each start 2 bytes into their allocations: cuBLASLt must be told (its default
  // assumption is 256-byte alignment), and the bias goes through the unfused add.
  const int64_t tokens = 9, n = 256, k = 128;
  const auto x = random_values(tokens * k, 21);
  const auto w = random_values(n * k, 22, 0.0f, 1.0f / std::sqrt(static_cast<float>(k)));
  const auto b = random_values(n, 23);
  Tensor b_cpu = cpu_tensor(b, {n});
  Tensor ref = cpu_->allocate({tokens, n}, DType::f32);
  cpu_->linear(cpu_tensor(x, {tokens, k}), cpu_tensor(w, {n, k}), &b_cpu, ref);
  const auto expected = read(*cpu_, ref);

  Tensor w_gpu = gpu_tensor(w, {n, k});
  Tensor x_shifted = misaligned_gpu(x, tokens, k);
  Tensor b_shifted = misaligned_gpu(b, 1, n).reshape({n});
  Tensor out_whole = poisoned_gpu({tokens * n + 1});
  Tensor out_shifted = out_whole.rows(1, tokens * n + 1).reshape({tokens, n});
  gpu_->linear(x_shifted, w_gpu, &b_shifted, out_shifted);
  expect_close(read(*gpu_, out_shifted), expected, "linear on misaligned views");

  // The same shape again with aligned tensors and a different bias: a cached plan must not carry the
  // first call's pointers or alignment over.
  Tensor x_aligned = gpu_tensor(x, {tokens, k});
  Tensor b_aligned = gpu_tensor(b, {n});
  for (int repeat = 0; repeat < 2; ++repeat) {
    Tensor out = poisoned_gpu({tokens, n});
    gpu_->linear(x_aligned, w_gpu, &b_aligned, out);
    expect_close(read(*gpu_, out), expected, "linear, aligned, call " + std::to_string(repeat));
  }
}

TEST_F(CudaBackendTest, AddMatchesCpu) {
  for (int64_t n : {int64_t{7}, int64_t{1000}, int64_t{4096 * 17}, int64_t{5120 * 3 + 5}}) {
    const std::string what = "add n " + std::to_string(n);
    const auto a = random_values(n, static_cast<uint32_t>(n));
    const auto b = random_values(n, static_cast<uint32_t>(n) + 1);
    Tensor inout_cpu = cpu_tensor(b, {n});
    cpu_->add(cpu_tensor(a, {n}), inout_cpu);
    const auto expected = read(*cpu_, inout_cpu);

    // Guarded: the target is a view of the first n elements of n + 8 poisoned ones.
    Tensor whole = poisoned_gpu({n + 8});
    Tensor inout = whole.rows(0, n);
    gpu_->upload(HostView{b.data(), DType::f32, {n}}, inout);
    gpu_->add(gpu_tensor(a, {n}), inout);
    expect_close(read(*gpu_, inout), expected, what);
    expect_untouched(read(*gpu_, whole.rows(n, n + 8)), what);

    Tensor shifted = misaligned_gpu(b, 1, n).reshape({n});
    gpu_->add(gpu_tensor(a, {n}), shifted);
    expect_close(read(*gpu_, shifted), expected, what + " on a misaligned view");
  }
}

TEST_F(CudaBackendTest, EmbeddingGathersExactRows) {
  const int64_t vocab = 1000;
  for (int64_t width : {int64_t{7}, int64_t{64}, int64_t{896}, int64_t{4096}}) {
    for (int64_t tokens : {int64_t{1}, int64_t{3}, int64_t{17}, int64_t{256}}) {
      const std::string what = "embedding width " + std::to_string(width) + " tokens " + std::to_string(tokens);
      const auto table = random_values(vocab * width, static_cast<uint32_t>(width * 131 + tokens));
      std::mt19937 rng(static_cast<uint32_t>(width + tokens));
      std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(vocab - 1));
      std::vector<int32_t> ids(static_cast<size_t>(tokens));
      for (int32_t& id : ids) id = pick(rng);
      ids.front() = static_cast<int32_t>(vocab - 1);  // the last row too

      Tensor out_cpu = cpu_->allocate({tokens, width}, DType::f32);
      cpu_->embedding(cpu_tensor(table, {vocab, width}), ids_on(*cpu_, ids), out_cpu);
      Tensor out_gpu = poisoned_gpu({tokens + 1, width});
      gpu_->embedding(gpu_tensor(table, {vocab, width}), ids_on(*gpu_, ids), out_gpu.rows(0, tokens));
      // A gather copies bits: bf16-exact inputs come back exactly.
      expect_equal(read(*gpu_, out_gpu.rows(0, tokens)), read(*cpu_, out_cpu), what);
      expect_untouched(read(*gpu_, out_gpu.rows(tokens, tokens + 1)), what);
    }
  }
}

TEST_F(CudaBackendTest, EmbeddingIdOutsideTheTableGivesZeros) {
  const int64_t vocab = 10, width = 64;
  const auto table = random_values(vocab * width, 5);
  const std::vector<int32_t> ids = {-1, 3, static_cast<int32_t>(vocab)};
  Tensor out = poisoned_gpu({3, width});
  gpu_->embedding(gpu_tensor(table, {vocab, width}), ids_on(*gpu_, ids), out);
  const auto got = read(*gpu_, out);
  for (int64_t i = 0; i < width; ++i) {
    EXPECT_EQ(got[i], 0.0f) << "row of id -1, element " << i;
    EXPECT_EQ(got[width + i], table[3 * width + i]) << "row of id 3, element " << i;
    EXPECT_EQ(got[2 * width + i], 0.0f) << "row of id " << vocab << ", element " << i;
  }
}

TEST_F(CudaBackendTest, UploadConvertsAndDownloadRoundTrips) {
  const int64_t n = 1001;
  const auto exact = random_values(n, 31);  // bf16-exact f32
  Tensor t = gpu_->allocate({n}, DType::bf16);
  gpu_->upload(HostView{exact.data(), DType::f32, {n}}, t);
  expect_equal(read(*gpu_, t), exact, "bf16-exact f32 into bf16");

  // f32 that bf16 cannot hold is rounded to nearest even, as f32_to_bf16 does on the host.
  std::vector<float> fine(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) fine[i] = exact[i] * 1.0001f + 1e-3f;
  gpu_->upload(HostView{fine.data(), DType::f32, {n}}, t);
  const auto rounded = read(*gpu_, t);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(rounded[i], bf16_to_f32(f32_to_bf16(fine[i]))) << "element " << i;

  std::vector<uint16_t> halves(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) halves[i] = f32_to_f16(exact[i]);
  gpu_->upload(HostView{halves.data(), DType::f16, {n}}, t);
  const auto from_f16 = read(*gpu_, t);
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(from_f16[i], bf16_to_f32(f32_to_bf16(f16_to_f32(halves[i])))) << "element " << i;

  Tensor f32 = gpu_->allocate({n}, DType::f32);
  gpu_->upload(HostView{fine.data(), DType::f32, {n}}, f32);
  expect_equal(read(*gpu_, f32), fine, "f32 into f32");

  std::vector<int32_t> ints(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ints[i] = static_cast<int32_t>(i * 7919 - 3000000);
  Tensor i32 = ids_on(*gpu_, ints);
  std::vector<int32_t> back(static_cast<size_t>(n));
  gpu_->download(i32, back.data());
  EXPECT_EQ(back, ints);
  EXPECT_THROW(gpu_->upload(HostView{exact.data(), DType::f32, {n}}, i32), std::invalid_argument);
}

// upload_all: a step's i32 inputs in one kernel from the pinned ring; lists it does not take (more
// tensors than one kernel copies, a conversion) one upload each. Every tensor is a view with a guard
// after it; many lists without a synchronisation come round the ring.
TEST_F(CudaBackendTest, UploadAllCopiesEveryTensor) {
  constexpr int32_t guard = -7;
  struct Target {
    std::vector<int32_t> host;
    Tensor whole;
  };
  auto make_targets = [&](const std::vector<int64_t>& sizes, int32_t seed) {
    std::vector<Target> targets;
    for (int64_t n : sizes) {
      Target t;
      for (int64_t i = 0; i < n; ++i) t.host.push_back(static_cast<int32_t>((i + 1) * 7919 + seed * 104729));
      t.whole = ids_on(*gpu_, std::vector<int32_t>(static_cast<size_t>(n + 4), guard));
      targets.push_back(std::move(t));
    }
    return targets;
  };
  auto uploads_of = [](const std::vector<Target>& targets) {
    std::vector<Backend::Upload> uploads;
    for (const Target& t : targets) {
      const int64_t n = static_cast<int64_t>(t.host.size());
      uploads.push_back({HostView{t.host.data(), DType::i32, {n}}, t.whole.rows(0, n)});
    }
    return uploads;
  };
  auto expect_copied = [&](const std::vector<Target>& targets, const std::string& what) {
    for (size_t k = 0; k < targets.size(); ++k) {
      std::vector<int32_t> want = targets[k].host;
      want.insert(want.end(), 4, guard);
      std::vector<int32_t> got(want.size());
      gpu_->download(targets[k].whole, got.data());
      ASSERT_EQ(got, want) << what << ", tensor " << k;
    }
  };
  const std::vector<int64_t> step = {1, 3, 0, 257, 5000, 2, 64, 1};
  auto eight = make_targets(step, 1);
  gpu_->upload_all(uploads_of(eight));
  expect_copied(eight, "eight tensors");
  std::vector<int64_t> nine = step;
  nine.push_back(33);
  auto more = make_targets(nine, 2);
  gpu_->upload_all(uploads_of(more));
  expect_copied(more, "nine tensors");

  // A bf16 tensor among them: converted, as upload() converts.
  auto mixed = make_targets({5, 9}, 3);
  const std::vector<float> floats = {1.5f, -2.0f, 0.25f};
  Tensor b = gpu_->allocate({3}, DType::bf16);
  std::vector<Backend::Upload> with_floats = uploads_of(mixed);
  with_floats.push_back({HostView{floats.data(), DType::f32, {3}}, b});
  gpu_->upload_all(with_floats);
  expect_copied(mixed, "with a conversion");
  expect_equal(read(*gpu_, b), floats, "the converted tensor");

  // 600 lists of 16 KiB, then every result: more than the 8 MiB ring holds.
  std::vector<std::vector<Target>> rounds;
  for (int r = 0; r < 600; ++r) {
    rounds.push_back(make_targets({4096, static_cast<int64_t>(r % 5)}, 10 + r));
    gpu_->upload_all(uploads_of(rounds.back()));
  }
  for (size_t r = 0; r < rounds.size(); ++r) expect_copied(rounds[r], "list " + std::to_string(r) + " of 600");
}

TEST_F(CudaBackendTest, RejectsWrongTensorsAndUnimplementedOps) {
  Tensor f32 = gpu_->allocate({4, 64}, DType::f32);
  Tensor w = gpu_->allocate({64}, DType::bf16);
  Tensor out = gpu_->allocate({4, 64}, DType::bf16);
  EXPECT_THROW(gpu_->rms_norm(f32, w, eps, out), std::invalid_argument);
  Tensor cpu_x = cpu_->allocate({4, 64}, DType::f32);
  EXPECT_THROW(gpu_->add(cpu_x, out), std::invalid_argument);
  // silu_mul is implemented now (tests/moe_gpu_test.cpp); a wrong dtype must still name the op.
  Tensor gate_up = gpu_->allocate({4, 128}, DType::f32);
  try {
    gpu_->silu_mul(gate_up, out);
    ADD_FAILURE() << "silu_mul did not throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("silu_mul"), std::string::npos) << e.what();
  }
  EXPECT_EQ(gpu_->compute_dtype(), DType::bf16);
  EXPECT_EQ(gpu_->device(), Device::cuda);
}

}  // namespace
}  // namespace troupe
