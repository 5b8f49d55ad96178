// The GPU sampler against engine/sampler.hpp on the same logits and the same uniform draws. Greedy
// rows, ranks and top-logprob ids must agree exactly; a sampled token may differ only at a near-tie,
// which a test proves by finding the GPU's token among the CPU sampler's answers for u, top_p and
// min_p moved by 1e-9 (the fixed-point masses of kernels/sampling.cu differ from the CPU's double sums
// far below that). Logprobs agree to 1e-3.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/dtype.hpp"
#include "engine/sampler.hpp"
#include "kernels/cuda_backend.hpp"
#include "kernels/gpu_sampler.hpp"
#include "tests/gpu_compare.hpp"

namespace troupe {
namespace {

using namespace troupe::test;

constexpr double near_tie = 1e-9;

SamplingParams make_params(double temperature, int32_t top_k = 0, double top_p = 1.0, double min_p = 0.0) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.min_p = min_p;
  p.max_tokens = std::nullopt;
  return p;
}

std::string describe(const SamplingParams& p) {
  return "T " + std::to_string(p.temperature) + " top_k " + std::to_string(p.top_k) + " top_p " +
         std::to_string(p.top_p) + " min_p " + std::to_string(p.min_p) + " rep " +
         std::to_string(p.repetition_penalty) + " pres " + std::to_string(p.presence_penalty) + " freq " +
         std::to_string(p.frequency_penalty);
}

// Logits like a language model's: a broad N(0, 2) floor and a few strong candidates, some of them tied.
std::vector<float> model_logits(int64_t rows, int64_t vocab, uint32_t seed, bool bf16_exact) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> floor_dist(0.0f, 2.0f);
  std::uniform_int_distribution<int64_t> pick(0, vocab - 1);
  std::uniform_real_distribution<float> lift(4.0f, 12.0f);
  std::vector<float> v(static_cast<size_t>(rows * vocab));
  for (float& x : v) x = floor_dist(rng);
  for (int64_t r = 0; r < rows; ++r) {
    float* row = v.data() + r * vocab;
    for (int j = 0; j < 8; ++j) row[pick(rng)] = lift(rng);
    row[pick(rng)] = row[pick(rng)];  // an exact tie among the candidates, most likely
  }
  if (bf16_exact)
    for (float& x : v) x = round_bf16(x);
  return v;
}

// One sequence as both samplers see it: the CPU's SequenceSampler, the mirror of its random stream
// that feeds the GPU its u, and the GPU-side description.
struct Sequence {
  SamplingParams params;
  std::vector<int32_t> prompt;
  std::vector<int32_t> stop_ids;  // the CPU sampler's: stop_token_ids ∪ eos, sorted
  int32_t slot = -1;
  std::unique_ptr<SequenceSampler> cpu;
  std::unique_ptr<Rng> mirror;

  Sequence(SamplingParams p, std::vector<int32_t> prompt_ids, std::vector<int32_t> eos, int32_t penalty_slot,
           uint64_t seed)
      : params(std::move(p)), prompt(std::move(prompt_ids)), slot(penalty_slot) {
    params.seed = static_cast<int64_t>(seed);
    cpu = std::make_unique<SequenceSampler>(params, prompt, eos);
    mirror = std::make_unique<Rng>(seed);
    stop_ids = params.stop_token_ids;
    if (!params.ignore_eos) stop_ids.insert(stop_ids.end(), eos.begin(), eos.end());
    std::sort(stop_ids.begin(), stop_ids.end());
    stop_ids.erase(std::unique(stop_ids.begin(), stop_ids.end()), stop_ids.end());
  }

  std::vector<int32_t> masked() const {
    return cpu->num_output_tokens() < params.min_tokens ? stop_ids : std::vector<int32_t>{};
  }
};

// The CPU sampler's pipeline up to the weights (sample()'s steps), for judging a disagreement.
std::vector<float> cpu_weights(const Sequence& s, std::span<const float> raw) {
  std::vector<float> work(raw.begin(), raw.end());
  s.cpu->apply_min_tokens(work);
  s.cpu->apply_penalties(work);
  const float temperature = static_cast<float>(s.params.temperature);
  for (float& x : work) x /= temperature;
  const float mx = *std::max_element(work.begin(), work.end());
  for (float& x : work) x = std::exp(x - mx);
  return work;
}

// Whether `token` is what the CPU sampler picks with u, top_p and min_p each moved by at most 1e-9.
bool near_tie_explains(const Sequence& s, std::span<const float> raw, double u, int32_t token) {
  const std::vector<float> w = cpu_weights(s, raw);
  std::vector<float> scratch;
  const int32_t top_k = s.params.top_k > 0 ? s.params.top_k : 0;
  for (double du : {-near_tie, 0.0, near_tie}) {
    for (double dp : {-near_tie, 0.0, near_tie}) {
      for (double dm : {-near_tie, 0.0, near_tie}) {
        const double top_p = s.params.top_p < 1.0 ? std::min(1.0 - 1e-12, s.params.top_p + dp) : 1.0;
        const double min_p = s.params.min_p > 0.0 ? s.params.min_p + dm : 0.0;
        const float tau = filter_threshold(w, min_p, top_k, top_p, scratch);
        if (sample_from(w, tau, std::clamp(u + du, 0.0, 1.0 - 1e-16)) == token) return true;
      }
    }
  }
  return false;
}

class SamplingGpuTest : public ::testing::Test {
 protected:
  static void TearDownTestSuite() {
    samplers_.clear();
    gpu_.reset();
  }

  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: run on the GPU machine (tools/gpu_smoke.sh)";
    if (!gpu_) gpu_ = make_cuda_backend(0);
  }

  static GpuSampler& sampler(int64_t vocab) {
    auto& s = samplers_[vocab];
    if (!s) s = std::make_unique<GpuSampler>(*gpu_, vocab, 64);
    return *s;
  }

  struct Outcome {
    int64_t compared = 0;
    int64_t excused = 0;
  };

  // One step for every sequence: the same logits to both samplers, the CPU's token accepted on both
  // sides (GPU: record()) so that penalty histories stay equal even after an excused near-tie.
  Outcome step(std::vector<Sequence>& seqs, const std::vector<float>& logits, int64_t vocab, DType dtype,
               bool with_logprobs, const std::string& what) {
    const int64_t rows = static_cast<int64_t>(seqs.size());
    GpuSampler& gpu_sampler = sampler(vocab);
    std::vector<GpuSampleRow> rows_gpu(seqs.size());
    std::vector<std::vector<int32_t>> masked(seqs.size());
    std::vector<double> us(seqs.size(), 0.0);
    for (size_t r = 0; r < seqs.size(); ++r) {
      Sequence& s = seqs[r];
      masked[r] = s.masked();
      // The CPU sampler draws exactly when it samples (not greedy) and something is unmasked.
      if (!s.params.greedy()) us[r] = s.mirror->uniform();
      rows_gpu[r] = GpuSampleRow{&s.params, us[r], s.slot, masked[r]};
    }
    Tensor logits_gpu = upload(*gpu_, logits, {rows, vocab}, dtype);
    std::vector<int32_t> tokens(seqs.size(), -1);
    std::vector<SampleResult> results(with_logprobs ? seqs.size() : 0);
    gpu_sampler.enqueue(logits_gpu, rows_gpu, with_logprobs, /*record=*/false);
    gpu_sampler.wait(tokens, results);

    Outcome outcome;
    std::vector<int32_t> slots, accepted;
    for (size_t r = 0; r < seqs.size(); ++r) {
      Sequence& s = seqs[r];
      const std::span<const float> raw(logits.data() + r * vocab, static_cast<size_t>(vocab));
      SampleResult ref;
      const int32_t expected = s.cpu->sample(raw, &ref);
      const std::string where = what + ", row " + std::to_string(r) + " (" + describe(s.params) + ")";
      ++outcome.compared;
      if (tokens[r] != expected) {
        if (s.params.greedy()) {
          ADD_FAILURE() << where << ": greedy must be exact, got " << tokens[r] << " for " << expected;
        } else {
          EXPECT_TRUE(near_tie_explains(s, raw, us[r], tokens[r]))
              << where << ": token " << tokens[r] << " where the CPU sampler chose " << expected << " (u " << us[r]
              << ")";
        }
        ++outcome.excused;
      }
      if (with_logprobs) {
        // Logprobs of the GPU's token, against compute_logprobs on the same raw logits.
        SampleResult check;
        compute_logprobs(raw, tokens[r], s.params.logprobs.value_or(0), check);
        const SampleResult& got = results[r];
        EXPECT_EQ(got.token, tokens[r]) << where;
        EXPECT_NEAR(got.logprob, check.logprob, 1e-3) << where;
        EXPECT_EQ(got.rank, check.rank) << where;
        EXPECT_EQ(got.top.size(), check.top.size()) << where;
        for (size_t j = 0; j < std::min(got.top.size(), check.top.size()); ++j) {
          EXPECT_EQ(got.top[j].token, check.top[j].token) << where << ", top " << j;
          EXPECT_NEAR(got.top[j].logprob, check.top[j].logprob, 1e-3) << where << ", top " << j;
        }
      }
      s.cpu->accept(expected);
      if (s.slot >= 0) {
        slots.push_back(s.slot);
        accepted.push_back(expected);
      }
    }
    gpu_sampler.record(slots, accepted);
    return outcome;
  }

  static inline std::unique_ptr<Backend> gpu_;
  static inline std::map<int64_t, std::unique_ptr<GpuSampler>> samplers_;
};

TEST_F(SamplingGpuTest, GreedyIsArgmaxExactlyWithTiesToTheLowestId) {
  for (int64_t vocab : {int64_t{37}, int64_t{1000}, int64_t{152064}}) {
    for (DType dtype : {DType::f32, DType::bf16}) {
      const int64_t rows = 16;
      auto logits = model_logits(rows, vocab, static_cast<uint32_t>(vocab), dtype == DType::bf16);
      // Rows 0-3: the maximum appears twice or more, the lowest id must win.
      for (int64_t r = 0; r < 4; ++r) {
        float* row = logits.data() + r * vocab;
        const float mx = *std::max_element(row, row + vocab);
        row[vocab - 1] = mx;
        row[(r * 7) % vocab] = mx;
      }
      std::vector<Sequence> seqs;
      for (int64_t r = 0; r < rows; ++r) seqs.emplace_back(make_params(0.0), std::vector<int32_t>{}, std::vector<int32_t>{}, -1, r);
      const Outcome o = step(seqs, logits, vocab, dtype, false,
                             "greedy vocab " + std::to_string(vocab) + " " + std::string(dtype_name(dtype)));
      EXPECT_EQ(o.excused, 0);
    }
  }
}

TEST_F(SamplingGpuTest, SampledTokensMatchTheCpuSamplerForTheSameUniform) {
  std::vector<SamplingParams> grid;
  for (double temperature : {0.7, 1.0, 1.5})
    for (int32_t top_k : {0, 1, 5, 50})
      for (double top_p : {1.0, 0.9, 0.5})
        for (double min_p : {0.0, 0.05}) grid.push_back(make_params(temperature, top_k, top_p, min_p));
  Outcome total;
  for (int64_t vocab : {int64_t{1000}, int64_t{152064}}) {
    for (DType dtype : {DType::f32, DType::bf16}) {
      for (int repeat = 0; repeat < 2; ++repeat) {
        const std::string what = "vocab " + std::to_string(vocab) + " " + std::string(dtype_name(dtype)) + " #" +
                                 std::to_string(repeat);
        SCOPED_TRACE(what);
        std::vector<Sequence> seqs;
        for (size_t r = 0; r < grid.size(); ++r)
          seqs.emplace_back(grid[r], std::vector<int32_t>{}, std::vector<int32_t>{}, -1,
                            static_cast<uint64_t>(vocab * 1000 + repeat * 100 + r));
        const auto logits = model_logits(static_cast<int64_t>(seqs.size()), vocab,
                                          static_cast<uint32_t>(vocab + repeat * 7 + (dtype == DType::bf16)),
                                          dtype == DType::bf16);
        const Outcome o = step(seqs, logits, vocab, dtype, false, what);
        total.compared += o.compared;
        total.excused += o.excused;
      }
    }
  }
  // Near-ties at 1e-9 are rare; many excuses would mean a systematic difference.
  EXPECT_LE(total.excused * 100, total.compared) << total.excused << " of " << total.compared << " excused";
}

TEST_F(SamplingGpuTest, FlatDistributionsAndMoreRowsThanMultiprocessors) {
  // Unpeaked logits (top_p keeps a large share of the vocabulary) and 300 rows, so that blocks take
  // several rows each.
  const int64_t vocab = 5000, rows = 300;
  std::vector<Sequence> seqs;
  for (int64_t r = 0; r < rows; ++r) {
    const double temperature = 0.5 + 0.01 * static_cast<double>(r % 100);
    seqs.emplace_back(make_params(temperature, r % 3 == 0 ? 0 : 1000, r % 2 == 0 ? 0.8 : 1.0, r % 5 == 0 ? 0.01 : 0.0),
                      std::vector<int32_t>{}, std::vector<int32_t>{}, -1, static_cast<uint64_t>(r + 17));
  }
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> logits(static_cast<size_t>(rows * vocab));
  for (float& x : logits) x = dist(rng);
  const Outcome o = step(seqs, logits, vocab, DType::f32, false, "flat");
  EXPECT_LE(o.excused * 100, o.compared) << o.excused << " of " << o.compared << " excused";
}

TEST_F(SamplingGpuTest, TopKOneAndMinPKeepOnlyWhatTheyShould) {
  const int64_t vocab = 152064, rows = 24;
  const auto logits = model_logits(rows, vocab, 11, true);
  std::vector<Sequence> seqs;
  for (int64_t r = 0; r < rows; ++r)
    seqs.emplace_back(r % 2 == 0 ? make_params(1.0, 1) : make_params(1.3, 0, 1.0, 0.2), std::vector<int32_t>{},
                      std::vector<int32_t>{}, -1, static_cast<uint64_t>(r));
  std::vector<GpuSampleRow> rows_gpu;
  for (auto& s : seqs) rows_gpu.push_back(GpuSampleRow{&s.params, s.mirror->uniform(), -1, {}});
  std::vector<int32_t> tokens(rows);
  sampler(vocab).sample(upload(*gpu_, logits, {rows, vocab}, DType::bf16), rows_gpu, tokens);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = logits.data() + r * vocab;
    const float mx = *std::max_element(row, row + vocab);
    if (r % 2 == 0) {
      EXPECT_EQ(row[tokens[r]], mx) << "row " << r << ": top_k = 1 keeps only the maximum (and its ties)";
    } else {
      // min_p 0.2 at temperature 1.3: the weight exp((x − max) / 1.3) must be at least 0.2.
      EXPECT_GE(std::exp((row[tokens[r]] - mx) / 1.3), 0.2 * (1 - 1e-6)) << "row " << r;
    }
  }
}

TEST_F(SamplingGpuTest, PenaltiesAndMinTokensOverSeveralSteps) {
  const int64_t vocab = 32000;
  GpuSampler& gpu_sampler = sampler(vocab);
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab - 1));
  std::vector<Sequence> seqs;
  const std::vector<int32_t> eos = {2};
  for (int r = 0; r < 12; ++r) {
    SamplingParams p = make_params(r % 3 == 0 ? 0.0 : 0.8, r % 4 == 1 ? 40 : 0, r % 4 == 2 ? 0.9 : 1.0);
    p.repetition_penalty = r % 2 == 0 ? 1.3 : 0.8;
    p.presence_penalty = r % 3 == 1 ? 0.5 : -0.25;
    p.frequency_penalty = r % 5 == 0 ? 0.0 : 0.7;
    p.min_tokens = r % 2 == 0 ? 3 : 0;
    p.stop_token_ids = {5, 9};
    std::vector<int32_t> prompt;
    for (int j = 0; j < 50; ++j) prompt.push_back(token(rng));
    seqs.emplace_back(p, prompt, eos, r, static_cast<uint64_t>(100 + r));
    gpu_sampler.begin_sequence(r, seqs.back().prompt);
  }
  Outcome total;
  for (int s = 0; s < 6; ++s) {
    // Strong logits on the prompt's tokens and the stop tokens, so that penalties and the min_tokens
    // mask change the outcome.
    auto logits = model_logits(static_cast<int64_t>(seqs.size()), vocab, static_cast<uint32_t>(s + 40), s % 2 == 0);
    for (size_t r = 0; r < seqs.size(); ++r) {
      float* row = logits.data() + r * vocab;
      for (int j = 0; j < 10; ++j) row[seqs[r].prompt[j]] = round_bf16(9.0f + 0.1f * j);
      row[2] = row[5] = row[9] = 14.0f;
    }
    const Outcome o = step(seqs, logits, vocab, s % 2 == 0 ? DType::bf16 : DType::f32, s == 5,
                           "penalties, step " + std::to_string(s));
    total.compared += o.compared;
    total.excused += o.excused;
  }
  EXPECT_LE(total.excused * 20, total.compared) << total.excused << " of " << total.compared << " excused";
}

TEST_F(SamplingGpuTest, RecordingOnTheDeviceMatchesAcceptingOnTheHost) {
  // Greedy with a frequency penalty: each step must avoid what the previous steps chose, which only
  // works if the sampler recorded its own tokens on the device (record = true).
  const int64_t vocab = 1000;
  GpuSampler& gpu_sampler = sampler(vocab);
  SamplingParams p = make_params(0.0);
  p.frequency_penalty = 2.0;
  p.presence_penalty = 1.0;
  const std::vector<int32_t> prompt = {1, 2, 3};
  SequenceSampler cpu(p, prompt);
  gpu_sampler.begin_sequence(7, prompt);
  std::mt19937 rng(9);
  std::normal_distribution<float> dist(0.0f, 0.5f);
  std::vector<float> logits(static_cast<size_t>(vocab));
  for (float& x : logits) x = dist(rng);
  for (int j = 0; j < 5; ++j) logits[100 + j] = 3.0f - 0.2f * static_cast<float>(j);  // five close favourites
  Tensor logits_gpu = upload(*gpu_, logits, {1, vocab}, DType::f32);
  for (int s = 0; s < 8; ++s) {
    const GpuSampleRow row{&p, 0.0, 7, {}};
    int32_t token = -1;
    gpu_sampler.sample(logits_gpu, std::span(&row, 1), std::span(&token, 1));
    const int32_t expected = cpu.sample(logits);
    ASSERT_EQ(token, expected) << "step " << s;
    cpu.accept(expected);
    int32_t on_device = -1;
    ASSERT_EQ(cudaMemcpy(&on_device, gpu_sampler.device_tokens(), sizeof(int32_t), cudaMemcpyDeviceToHost),
              cudaSuccess);
    EXPECT_EQ(on_device, token);
  }
}

TEST_F(SamplingGpuTest, LogprobsMatchComputeLogprobs) {
  for (int64_t vocab : {int64_t{37}, int64_t{152064}}) {
    for (DType dtype : {DType::f32, DType::bf16}) {
      std::vector<Sequence> seqs;
      int r = 0;
      for (int32_t n : {0, 1, 5, 20}) {
        for (double temperature : {0.0, 1.0}) {
          SamplingParams p = make_params(temperature, 0, 0.95);
          p.logprobs = n;
          seqs.emplace_back(p, std::vector<int32_t>{}, std::vector<int32_t>{}, -1, static_cast<uint64_t>(r++));
        }
      }
      auto logits = model_logits(static_cast<int64_t>(seqs.size()), vocab, static_cast<uint32_t>(vocab + 3),
                                 dtype == DType::bf16);
      // A block of equal logits at the top of row 3: top-n must list them in id order.
      for (int j = 0; j < 6; ++j) logits[3 * vocab + (j * 5 % vocab)] = 20.0f;
      step(seqs, logits, vocab, dtype, true, "logprobs vocab " + std::to_string(vocab) + " " +
                                                 std::string(dtype_name(dtype)));
    }
  }
}

TEST_F(SamplingGpuTest, EveryTokenMaskedGivesTokenZero) {
  const int64_t vocab = 37;
  std::vector<int32_t> all(vocab);
  for (int64_t i = 0; i < vocab; ++i) all[i] = static_cast<int32_t>(i);
  const auto logits = model_logits(2, vocab, 1, false);
  SamplingParams greedy = make_params(0.0), sampled = make_params(1.0);
  const GpuSampleRow rows[] = {{&greedy, 0.0, -1, all}, {&sampled, 0.5, -1, all}};
  std::vector<int32_t> tokens(2, -1);
  sampler(vocab).sample(upload(*gpu_, logits, {2, vocab}, DType::f32), rows, tokens);
  EXPECT_EQ(tokens[0], 0);
  EXPECT_EQ(tokens[1], 0);
}

TEST_F(SamplingGpuTest, RejectsWhatItCannotSample) {
  GpuSampler& s = sampler(1000);
  SamplingParams penalised = make_params(1.0);
  penalised.repetition_penalty = 1.2;
  Tensor logits = upload(*gpu_, model_logits(1, 1000, 1, false), {1, 1000}, DType::f32);
  std::vector<int32_t> token(1);
  const GpuSampleRow no_slot{&penalised, 0.5, -1, {}};
  EXPECT_THROW(s.sample(logits, std::span(&no_slot, 1), token), std::invalid_argument);
  const GpuSampleRow bad_u{&penalised, 1.0, 0, {}};
  EXPECT_THROW(s.sample(logits, std::span(&bad_u, 1), token), std::invalid_argument);
  Tensor narrow = upload(*gpu_, model_logits(1, 999, 1, false), {1, 999}, DType::f32);
  const GpuSampleRow fine{&penalised, 0.5, 0, {}};
  EXPECT_THROW(s.sample(narrow, std::span(&fine, 1), token), std::invalid_argument);
  EXPECT_THROW(s.wait(token), std::logic_error);
  EXPECT_THROW(s.begin_sequence(64, {}), std::invalid_argument);
  // Nothing above left a batch pending: a valid call still works.
  s.sample(logits, std::span(&fine, 1), token);
  EXPECT_GE(token[0], 0);
  EXPECT_LT(token[0], 1000);
}

}  // namespace
}  // namespace troupe
