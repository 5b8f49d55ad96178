// The CUDA backend's activation, row-movement and mixture-of-experts ops against the CPU reference,
// on fresh random inputs rounded to bf16 (so that only the precision of the computation differs).
// Outputs are poisoned with NaN first and most cases keep a poisoned guard row after them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/cpu_backend.hpp"
#include "engine/dtype.hpp"
#include "kernels/cuda_backend.hpp"
#include "kernels/moe_experts.cuh"
#include "tests/gpu_compare.hpp"

namespace troupe {
namespace {

using namespace troupe::test;
using Shape = std::vector<int64_t>;

class MoeGpuTest : public ::testing::Test {
 protected:
  static void TearDownTestSuite() { gpu_.reset(); }

  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: run on the GPU machine (tools/gpu_smoke.sh)";
    if (!gpu_) gpu_ = make_cuda_backend(0);
  }

  Tensor gpu_bf16(const std::vector<float>& v, const Shape& shape) { return upload(*gpu_, v, shape, DType::bf16); }
  Tensor cpu_f32(const std::vector<float>& v, const Shape& shape) { return upload(*cpu_, v, shape, DType::f32); }

  static inline std::unique_ptr<Backend> gpu_;
  std::unique_ptr<Backend> cpu_ = make_cpu_backend();
};

// ---- activations ---------------------------------------------------------------------------------------

TEST_F(MoeGpuTest, SiluMulMatchesCpu) {
  for (int64_t inter : {int64_t{8}, int64_t{37}, int64_t{768}, int64_t{1000}}) {
    for (int64_t rows : {int64_t{1}, int64_t{7}, int64_t{100}}) {
      const std::string what = "silu_mul rows " + std::to_string(rows) + " inter " + std::to_string(inter);
      const auto gate_up = random_values(rows * 2 * inter, static_cast<uint32_t>(rows * 7919 + inter), 0.0f, 3.0f);
      Tensor ref = cpu_->allocate({rows, inter}, DType::f32);
      cpu_->silu_mul(cpu_f32(gate_up, {rows, 2 * inter}), ref);

      Tensor out = poisoned_bf16(*gpu_, {rows + 1, inter});
      gpu_->silu_mul(gpu_bf16(gate_up, {rows, 2 * inter}), out.rows(0, rows));
      expect_close(read(*gpu_, out.rows(0, rows)), read(*cpu_, ref), what);
      expect_untouched(read(*gpu_, out.rows(rows, rows + 1)), what);
    }
  }
}

TEST_F(MoeGpuTest, SiluMulOnMisalignedViews) {
  // inter is a multiple of 8, but both views start 2 bytes into their allocations: the scalar path.
  const int64_t rows = 5, inter = 64;
  const auto gate_up = random_values(rows * 2 * inter + 1, 3, 0.0f, 2.0f);
  const std::vector<float> body(gate_up.begin() + 1, gate_up.end());
  Tensor ref = cpu_->allocate({rows, inter}, DType::f32);
  cpu_->silu_mul(cpu_f32(body, {rows, 2 * inter}), ref);

  Tensor in_whole = gpu_bf16(gate_up, {rows * 2 * inter + 1});
  Tensor out_whole = poisoned_bf16(*gpu_, {rows * inter + 1});
  Tensor out = out_whole.rows(1, rows * inter + 1).reshape({rows, inter});
  gpu_->silu_mul(in_whole.rows(1, rows * 2 * inter + 1).reshape({rows, 2 * inter}), out);
  expect_close(read(*gpu_, out), read(*cpu_, ref), "silu_mul on misaligned views");
}

TEST_F(MoeGpuTest, AddSigmoidGatedMatchesCpu) {
  for (int64_t width : {int64_t{7}, int64_t{64}, int64_t{2048}}) {
    for (int64_t rows : {int64_t{1}, int64_t{7}, int64_t{100}}) {
      const std::string what = "add_sigmoid_gated rows " + std::to_string(rows) + " width " + std::to_string(width);
      const uint32_t seed = static_cast<uint32_t>(rows * 131 + width);
      const auto x = random_values(rows * width, seed);
      const auto gate = random_values(rows, seed + 1, 0.0f, 3.0f);
      const auto inout = random_values(rows * width, seed + 2);
      Tensor ref = cpu_f32(inout, {rows, width});
      cpu_->add_sigmoid_gated(cpu_f32(x, {rows, width}), cpu_f32(gate, {rows, 1}), ref);

      Tensor whole = poisoned_bf16(*gpu_, {rows + 1, width});
      Tensor target = whole.rows(0, rows);
      gpu_->upload(HostView{inout.data(), DType::f32, {rows, width}}, target);
      gpu_->add_sigmoid_gated(gpu_bf16(x, {rows, width}), gpu_bf16(gate, {rows, 1}), target);
      expect_close(read(*gpu_, target), read(*cpu_, ref), what);
      expect_untouched(read(*gpu_, whole.rows(rows, rows + 1)), what);
    }
  }
}

// ---- row movement ------------------------------------------------------------------------------------------

TEST_F(MoeGpuTest, ScatterAddRowsWithRepeatedRowsIsExactAndDeterministic) {
  for (int64_t width : {int64_t{7}, int64_t{64}, int64_t{2048}}) {
    for (int64_t out_rows : {int64_t{1}, int64_t{5}, int64_t{300}}) {
      const std::string what = "scatter_add_rows width " + std::to_string(width) + " rows " + std::to_string(out_rows);
      SCOPED_TRACE(what);
      std::mt19937 rng(static_cast<uint32_t>(width * 17 + out_rows));
      // Up to 8 contributions per row (a MoE combine's top_k), some rows none, in shuffled order.
      std::vector<int32_t> index;
      std::uniform_int_distribution<int> repeats(0, 8);
      for (int64_t r = 0; r < out_rows; ++r) {
        const int n = r == 0 ? 3 : repeats(rng);
        for (int j = 0; j < n; ++j) index.push_back(static_cast<int32_t>(r));
      }
      std::shuffle(index.begin(), index.end(), rng);
      const int64_t n = static_cast<int64_t>(index.size());
      const auto src = random_values(n * width, static_cast<uint32_t>(n + width));
      const auto base = random_values(out_rows * width, static_cast<uint32_t>(n + width + 1));

      Tensor ref = cpu_f32(base, {out_rows, width});
      cpu_->scatter_add_rows(cpu_f32(src, {n, width}), upload_i32(*cpu_, index, {n}), ref);
      // The GPU adds in the CPU's order in f32 and rounds once: the bf16 rounding of the reference.
      std::vector<float> expected = read(*cpu_, ref);
      for (float& v : expected) v = round_bf16(v);

      Tensor src_gpu = gpu_bf16(src, {n, width});
      Tensor index_gpu = upload_i32(*gpu_, index, {n});
      std::vector<float> first;
      for (int run = 0; run < 2; ++run) {
        Tensor whole = poisoned_bf16(*gpu_, {out_rows + 1, width});
        Tensor out = whole.rows(0, out_rows);
        gpu_->upload(HostView{base.data(), DType::f32, {out_rows, width}}, out);
        gpu_->scatter_add_rows(src_gpu, index_gpu, out);
        const auto got = read(*gpu_, out);
        expect_equal(got, expected, what + ", run " + std::to_string(run));
        expect_untouched(read(*gpu_, whole.rows(out_rows, out_rows + 1)), what);
        if (run == 0) {
          first = got;
        } else {
          expect_equal(got, first, what + ": second run differs from the first");
        }
      }
    }
  }
}

TEST_F(MoeGpuTest, UnstackColumnsMovesExactBits) {
  for (DType dtype : {DType::bf16, DType::f32}) {
    for (int64_t parts : {int64_t{1}, int64_t{2}, int64_t{4}}) {
      for (int64_t cols : {int64_t{7}, int64_t{64}, int64_t{1000}}) {
        for (int64_t rows : {int64_t{1}, int64_t{5}}) {
          for (int64_t cut : {int64_t{0}, int64_t{3}}) {
            const int64_t width = parts * cols - cut;
            const std::string what = std::string(dtype_name(dtype)) + " unstack_columns parts " +
                                     std::to_string(parts) + " rows " + std::to_string(rows) + " cols " +
                                     std::to_string(cols) + " width " + std::to_string(width);
            const auto stacked = random_values(parts * rows * cols, static_cast<uint32_t>(parts * 1000 + cols + rows));
            Tensor ref = cpu_->allocate({rows, width}, DType::f32);
            cpu_->unstack_columns(cpu_f32(stacked, {parts, rows, cols}), ref);

            Tensor out = gpu_->allocate({rows + 1, width}, dtype);
            const std::vector<float> nan(static_cast<size_t>((rows + 1) * width), NAN);
            gpu_->upload(HostView{nan.data(), DType::f32, {rows + 1, width}}, out);
            gpu_->unstack_columns(upload(*gpu_, stacked, {parts, rows, cols}, dtype), out.rows(0, rows));
            expect_equal(read(*gpu_, out.rows(0, rows)), read(*cpu_, ref), what);
            expect_untouched(read(*gpu_, out.rows(rows, rows + 1)), what);
          }
        }
      }
    }
  }
}

// ---- routing -------------------------------------------------------------------------------------------------

// Softmax probabilities of one row in double, for judging near-ties.
std::vector<double> softmax_row(const float* logits, int64_t experts) {
  const double mx = *std::max_element(logits, logits + experts);
  std::vector<double> p(static_cast<size_t>(experts));
  double sum = 0.0;
  for (int64_t i = 0; i < experts; ++i) sum += p[i] = std::exp(logits[i] - mx);
  for (double& x : p) x /= sum;
  return p;
}

TEST_F(MoeGpuTest, MoeRouteMatchesCpu) {
  int64_t near_ties = 0;
  for (int64_t experts : {int64_t{8}, int64_t{60}, int64_t{128}, int64_t{256}}) {
    for (int top_k : {2, 4, 8}) {
      for (bool renormalize : {false, true}) {
        for (int64_t tokens : {int64_t{1}, int64_t{7}, int64_t{1000}}) {
          for (DType dtype : {DType::bf16, DType::f32}) {
            if (dtype == DType::f32 && tokens != 1000) continue;
            const std::string what = "moe_route E " + std::to_string(experts) + " k " + std::to_string(top_k) +
                                     (renormalize ? " renormalised" : "") + " T " + std::to_string(tokens) + " " +
                                     std::string(dtype_name(dtype));
            SCOPED_TRACE(what);
            // σ = 2 spreads the probabilities; bf16 logits also bring exact ties (→ lower id).
            auto logits = random_values(tokens * experts,
                                        static_cast<uint32_t>(experts * 1000 + top_k * 10 + renormalize + tokens), 0.0f,
                                        2.0f);
            if (dtype == DType::f32) {
              std::mt19937 rng(7);
              std::uniform_real_distribution<float> jitter(-0.004f, 0.004f);
              for (float& v : logits) v += jitter(rng);  // values bf16 cannot hold
            }
            Tensor w_cpu = cpu_->allocate({tokens, top_k}, DType::f32);
            Tensor id_cpu = cpu_->allocate({tokens, top_k}, DType::i32);
            cpu_->moe_route(cpu_f32(logits, {tokens, experts}), top_k, renormalize, w_cpu, id_cpu);

            Tensor w_gpu = gpu_->allocate({tokens, top_k}, DType::f32);
            Tensor id_gpu = gpu_->allocate({tokens, top_k}, DType::i32);
            gpu_->moe_route(upload(*gpu_, logits, {tokens, experts}, dtype), top_k, renormalize, w_gpu, id_gpu);

            const auto ids_ref = read_i32(*cpu_, id_cpu), ids = read_i32(*gpu_, id_gpu);
            const auto ws_ref = read(*cpu_, w_cpu), ws = read(*gpu_, w_gpu);
            for (int64_t t = 0; t < tokens; ++t) {
              const auto p = softmax_row(logits.data() + t * experts, experts);
              for (int j = 0; j < top_k; ++j) {
                const size_t at = static_cast<size_t>(t * top_k + j);
                ASSERT_GE(ids[at], 0) << "token " << t << " slot " << j;
                ASSERT_LT(ids[at], experts) << "token " << t << " slot " << j;
                if (ids[at] != ids_ref[at]) {
                  // Excused only when the two experts' probabilities agree to float rounding.
                  const double a = p[ids[at]], b = p[ids_ref[at]];
                  ASSERT_LE(std::abs(a - b), 1e-6 * std::max(a, b))
                      << "token " << t << " slot " << j << ": expert " << ids[at] << " vs " << ids_ref[at];
                  ++near_ties;
                  continue;
                }
                EXPECT_NEAR(ws[at], ws_ref[at], 1e-5) << "token " << t << " slot " << j;
              }
            }
          }
        }
      }
    }
  }
  EXPECT_LE(near_ties, 2) << "near-ties excused";
}

// ---- routed experts ------------------------------------------------------------------------------------------

struct ExpertWeights {
  int64_t experts, hidden, inter;
  std::vector<float> gate_up, down;
};

// Weights scaled like a trained layer's (unit-variance activations stay unit-variance), cached per shape.
const ExpertWeights& expert_weights(int64_t experts, int64_t hidden, int64_t inter) {
  static std::map<std::vector<int64_t>, ExpertWeights> cache;
  const std::vector<int64_t> key = {experts, hidden, inter};
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  ExpertWeights w{experts, hidden, inter, {}, {}};
  const uint32_t seed = static_cast<uint32_t>(experts * 7 + hidden * 13 + inter);
  w.gate_up = random_values(experts * 2 * inter * hidden, seed, 0.0f, 1.0f / std::sqrt(static_cast<float>(hidden)));
  w.down = random_values(experts * hidden * inter, seed + 1, 0.0f, 1.0f / std::sqrt(static_cast<float>(inter)));
  return cache.emplace(key, std::move(w)).first->second;
}

struct Routing {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

// top_k distinct experts of `total` per token (never `avoid`), with positive weights summing to 1.
Routing random_routing(int64_t tokens, int top_k, int total, int avoid, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> weight(0.05f, 1.0f);
  Routing r;
  std::vector<int32_t> all;
  for (int e = 0; e < total; ++e)
    if (e != avoid) all.push_back(e);
  for (int64_t t = 0; t < tokens; ++t) {
    std::shuffle(all.begin(), all.end(), rng);
    float sum = 0.0f;
    std::vector<float> w(static_cast<size_t>(top_k));
    for (float& x : w) sum += x = weight(rng);
    for (int j = 0; j < top_k; ++j) {
      r.ids.push_back(all[j]);
      r.weights.push_back(w[j] / sum);
    }
  }
  return r;
}

class MoeExpertsTest : public MoeGpuTest {
 protected:
  // Runs both backends on the same inputs; returns (gpu, cpu) outputs. The GPU output is checked for
  // a poisoned guard row and for determinism (a second run must give the same bits).
  std::pair<std::vector<float>, std::vector<float>> run(const ExpertWeights& w, int64_t tokens, int top_k,
                                                        const Routing& routing, int expert_begin,
                                                        const std::string& what) {
    const int64_t h = w.hidden;
    const auto x = random_values(tokens * h, static_cast<uint32_t>(tokens * 31 + h + expert_begin));
    Tensor out_cpu = cpu_->allocate({tokens, h}, DType::f32);
    cpu_->moe_experts(cpu_f32(x, {tokens, h}), cpu_f32(routing.weights, {tokens, top_k}),
                      upload_i32(*cpu_, routing.ids, {tokens, top_k}),
                      cpu_f32(w.gate_up, {w.experts, 2 * w.inter, h}), cpu_f32(w.down, {w.experts, h, w.inter}),
                      expert_begin, out_cpu);

    Tensor x_gpu = gpu_bf16(x, {tokens, h});
    Tensor weights_gpu = upload(*gpu_, routing.weights, {tokens, top_k}, DType::f32);
    Tensor ids_gpu = upload_i32(*gpu_, routing.ids, {tokens, top_k});
    Tensor gate_up_gpu = gpu_bf16(w.gate_up, {w.experts, 2 * w.inter, h});
    Tensor down_gpu = gpu_bf16(w.down, {w.experts, h, w.inter});
    std::vector<float> first;
    for (int repeat = 0; repeat < 2; ++repeat) {
      Tensor whole = poisoned_bf16(*gpu_, {tokens + 1, h});
      gpu_->moe_experts(x_gpu, weights_gpu, ids_gpu, gate_up_gpu, down_gpu, expert_begin, whole.rows(0, tokens));
      auto got = read(*gpu_, whole.rows(0, tokens));
      expect_untouched(read(*gpu_, whole.rows(tokens, tokens + 1)), what);
      if (repeat == 0) {
        first = std::move(got);
      } else {
        expect_equal(got, first, what + ": second run differs from the first");
      }
    }
    return {first, read(*cpu_, out_cpu)};
  }
};

TEST_F(MoeExpertsTest, MatchesCpuOverTokenCountsShardsAndShapes) {
  constexpr int total_experts = 16, local = 8, top_k = 4;
  struct Dims {
    int64_t hidden, inter;
  };
  // 60/36: neither a multiple of 8, so both GEMMs take the element-wise loader; 64/36: only the
  // second does.
  for (Dims d : {Dims{64, 32}, Dims{2048, 768}, Dims{60, 36}, Dims{64, 36}}) {
    const ExpertWeights& w = expert_weights(local, d.hidden, d.inter);
    for (int expert_begin : {0, 8}) {
      for (int64_t tokens : {int64_t{1}, int64_t{7}, int64_t{100}, int64_t{1000}}) {
        if (d.hidden == 2048 && tokens == 1000 && expert_begin == 8) continue;  // the CPU reference is slow
        const std::string what = "moe_experts H " + std::to_string(d.hidden) + " I " + std::to_string(d.inter) +
                                 " begin " + std::to_string(expert_begin) + " T " + std::to_string(tokens);
        SCOPED_TRACE(what);
        // Local expert 3 gets no token; most tokens also have slots on the other rank's experts.
        const Routing routing = random_routing(tokens, top_k, total_experts, expert_begin + 3,
                                               static_cast<uint32_t>(tokens * 3 + expert_begin + d.hidden));
        bool any_local = false;
        for (int32_t id : routing.ids) any_local |= id >= expert_begin && id < expert_begin + local;
        auto [gpu, cpu] = run(w, tokens, top_k, routing, expert_begin, what);
        if (any_local) {
          expect_close(gpu, cpu, what);
        } else {
          expect_equal(gpu, cpu, what + " (no local slot: zeros)");
        }
        // A token whose slots are all on the other rank's experts gets an exact zero row.
        for (int64_t t = 0; t < tokens; ++t) {
          bool local_slot = false;
          for (int j = 0; j < top_k; ++j) {
            const int32_t id = routing.ids[t * top_k + j];
            local_slot |= id >= expert_begin && id < expert_begin + local;
          }
          if (local_slot) continue;
          for (int64_t i = 0; i < d.hidden; ++i) ASSERT_EQ(gpu[t * d.hidden + i], 0.0f) << "token " << t;
        }
      }
    }
  }
}

TEST_F(MoeExpertsTest, EveryTopKAndAllSlotsRemote) {
  const ExpertWeights& w = expert_weights(8, 64, 32);
  for (int top_k : {1, 2, 8}) {
    const std::string what = "moe_experts top_k " + std::to_string(top_k);
    SCOPED_TRACE(what);
    const Routing routing = random_routing(50, top_k, 8, -1, static_cast<uint32_t>(top_k));
    auto [gpu, cpu] = run(w, 50, top_k, routing, 0, what);
    expect_close(gpu, cpu, what);
  }
  // Every slot on experts 8..15 while this rank holds 0..7: the output is all zeros.
  Routing remote = random_routing(20, 4, 8, -1, 99);
  for (int32_t& id : remote.ids) id += 8;
  auto [gpu, cpu] = run(w, 20, 4, remote, 0, "all slots remote");
  for (float v : gpu) ASSERT_EQ(v, 0.0f);
}

TEST_F(MoeExpertsTest, ManyLocalExperts) {
  // The plan kernel keeps per-warp counts for every local expert; 60 and 128 of them (Qwen2-MoE's and
  // Qwen3-MoE's counts), all local or the upper half of 256.
  struct Case {
    int local, total, begin, top_k;
  };
  for (Case c : {Case{60, 60, 0, 4}, Case{128, 256, 128, 8}}) {
    const ExpertWeights& w = expert_weights(c.local, 64, 32);
    for (int64_t tokens : {int64_t{3}, int64_t{300}}) {
      const std::string what = "moe_experts " + std::to_string(c.local) + " local experts, T " + std::to_string(tokens);
      SCOPED_TRACE(what);
      const Routing routing = random_routing(tokens, c.top_k, c.total, -1, static_cast<uint32_t>(c.local + tokens));
      auto [gpu, cpu] = run(w, tokens, c.top_k, routing, c.begin, what);
      expect_close(gpu, cpu, what);
    }
  }
}

TEST_F(MoeExpertsTest, ChunkedTokensMatchOneChunk) {
  // A tiny chunk budget forces many chunks of a few tokens (each with its own plan) through the
  // launcher directly; the result must equal the CPU reference as a single chunk would.
  const ExpertWeights& w = expert_weights(8, 64, 32);
  const int64_t tokens = 37;
  const int top_k = 4;
  const Routing routing = random_routing(tokens, top_k, 16, -1, 5);
  const auto x = random_values(tokens * 64, 77);
  Tensor ref = cpu_->allocate({tokens, 64}, DType::f32);
  cpu_->moe_experts(cpu_f32(x, {tokens, 64}), cpu_f32(routing.weights, {tokens, top_k}),
                    upload_i32(*cpu_, routing.ids, {tokens, top_k}), cpu_f32(w.gate_up, {8, 64, 64}),
                    cpu_f32(w.down, {8, 64, 32}), 4, ref);

  cuda::MoeExpertsShape shape;
  shape.tokens = tokens;
  shape.top_k = top_k;
  shape.experts = 8;
  shape.expert_begin = 4;
  shape.hidden = 64;
  shape.inter = 32;
  shape.chunk_bytes = 5 * top_k * (8 + 2 * (32 + 64));  // 5 tokens per chunk: 8 chunks, the last short
  const std::size_t bytes = cuda::moe_experts_scratch_bytes(shape);
  Tensor scratch = gpu_->allocate({static_cast<int64_t>(bytes)}, DType::u8);
  Tensor x_gpu = gpu_bf16(x, {tokens, 64});
  Tensor weights_gpu = upload(*gpu_, routing.weights, {tokens, top_k}, DType::f32);
  Tensor ids_gpu = upload_i32(*gpu_, routing.ids, {tokens, top_k});
  Tensor gate_up_gpu = gpu_bf16(w.gate_up, {8, 64, 64});
  Tensor down_gpu = gpu_bf16(w.down, {8, 64, 32});
  Tensor out = poisoned_bf16(*gpu_, {tokens, 64});
  cuda::moe_experts(static_cast<const __nv_bfloat16*>(x_gpu.data()), weights_gpu.as<float>(),
                    ids_gpu.as<int32_t>(), static_cast<const __nv_bfloat16*>(gate_up_gpu.data()),
                    static_cast<const __nv_bfloat16*>(down_gpu.data()), static_cast<__nv_bfloat16*>(out.data()),
                    shape, scratch.data(), bytes, cuda_stream_of(*gpu_).stream);
  expect_close(read(*gpu_, out), read(*cpu_, ref), "chunked moe_experts");
}

TEST_F(MoeExpertsTest, RejectsMismatchedShapes) {
  Tensor x = gpu_->allocate({4, 64}, DType::bf16);
  Tensor w = gpu_->allocate({4, 2}, DType::f32);
  Tensor ids = gpu_->allocate({4, 2}, DType::i32);
  Tensor gate_up = gpu_->allocate({8, 64, 64}, DType::bf16);
  Tensor down_wrong = gpu_->allocate({8, 64, 16}, DType::bf16);
  Tensor out = gpu_->allocate({4, 64}, DType::bf16);
  EXPECT_THROW(gpu_->moe_experts(x, w, ids, gate_up, down_wrong, 0, out), std::invalid_argument);
  Tensor ids_f32 = gpu_->allocate({4, 2}, DType::f32);
  Tensor down = gpu_->allocate({8, 64, 32}, DType::bf16);
  EXPECT_THROW(gpu_->moe_experts(x, w, ids_f32, gate_up, down, 0, out), std::invalid_argument);
  EXPECT_THROW(gpu_->moe_route(x, 65, true, w, ids), std::invalid_argument);
}

}  // namespace
}  // namespace troupe
