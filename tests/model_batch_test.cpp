// One forward over many sequences must equal running each alone: ragged prompt lengths, scattered
// cache blocks, and steps that mix chunked prefill with decode (what the scheduler will send).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "config/model_config.hpp"
#include "engine/cpu_backend.hpp"
#include "engine/model.hpp"
#include "tests/model_support.hpp"
#include "tests/test_support.hpp"

namespace troupe {
namespace {

constexpr int kBlock = 16;

struct Seq {
  std::vector<int32_t> tokens;
  std::vector<int32_t> table;
};

std::vector<float> alone(Model& model, const std::vector<int32_t>& tokens) {
  return test::logits_alone(model, tokens, kBlock);
}

float max_diff(const float* a, const float* b, size_t n) {
  float worst = 0.0f;
  for (size_t i = 0; i < n; ++i) worst = std::max(worst, std::fabs(a[i] - b[i]));
  return worst;
}

// Sequences of lengths 1..40 with their blocks drawn from a shuffled pool, so no table is contiguous.
std::vector<Seq> make_sequences(int vocab, int count, int& total_blocks) {
  std::mt19937 rng(7);
  std::vector<Seq> seqs(count);
  total_blocks = 0;
  for (int i = 0; i < count; ++i) {
    const int len = 1 + static_cast<int>(rng() % 40);
    for (int j = 0; j < len; ++j) seqs[i].tokens.push_back(static_cast<int32_t>(rng() % vocab));
    total_blocks += (len + kBlock - 1) / kBlock;
  }
  std::vector<int32_t> pool(total_blocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  size_t next = 0;
  for (Seq& s : seqs) {
    for (size_t b = 0; b < (s.tokens.size() + kBlock - 1) / kBlock; ++b) s.table.push_back(pool[next++]);
  }
  return seqs;
}

class ModelBatch : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelBatch, PrefillOfNineRaggedSequencesEqualsEachAlone) {
  const auto dir = test::tiny_model(GetParam());
  auto backend = make_cpu_backend();
  Model model(load_model_config(dir), WeightFiles::open(dir), *backend);
  const int vocab = model.config().vocab_size;
  int blocks = 0;
  const std::vector<Seq> seqs = make_sequences(vocab, 9, blocks);
  KvCache cache = model.allocate_kv_cache(blocks, kBlock);
  StepBatch batch;
  for (const Seq& s : seqs) batch.add_sequence(s.tokens, 0, s.table, Logits::all);
  std::vector<float> together(batch.logits_indices.size() * vocab);
  backend->download(model.forward(batch, cache), together.data());

  size_t row = 0;
  for (const Seq& s : seqs) {
    const std::vector<float> ref = alone(model, s.tokens);
    EXPECT_LE(max_diff(together.data() + row * vocab, ref.data(), ref.size()), 1e-5f) << "length " << s.tokens.size();
    row += s.tokens.size();
  }
}

TEST_P(ModelBatch, StepsMixingChunkedPrefillAndDecodeEqualEachAlone) {
  const auto dir = test::tiny_model(GetParam());
  auto backend = make_cpu_backend();
  Model model(load_model_config(dir), WeightFiles::open(dir), *backend);
  const int vocab = model.config().vocab_size;
  int blocks = 0;
  const std::vector<Seq> seqs = make_sequences(vocab, 10, blocks);
  KvCache cache = model.allocate_kv_cache(blocks, kBlock);

  // Step 1 computes a prefix of each sequence (half, at least one token). Step 2 computes the rest:
  // one token for sequences with one left (a decode), a chunk for the others. Step 2's logits must
  // equal the whole sequence's at the same positions.
  StepBatch first;
  std::vector<int> done(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    done[i] = std::max<int>(1, static_cast<int>(seqs[i].tokens.size()) / 2);
    first.add_sequence(std::span(seqs[i].tokens).first(done[i]), 0, seqs[i].table);
  }
  model.forward(first, cache);
  StepBatch second;
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (done[i] == static_cast<int>(seqs[i].tokens.size())) continue;
    second.add_sequence(std::span(seqs[i].tokens).subspan(done[i]), done[i], seqs[i].table, Logits::all);
  }
  ASSERT_GE(second.num_seqs(), 5);
  std::vector<float> got(second.logits_indices.size() * vocab);
  backend->download(model.forward(second, cache), got.data());
  size_t row = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const size_t rest = seqs[i].tokens.size() - done[i];
    if (rest == 0) continue;
    const std::vector<float> ref = alone(model, seqs[i].tokens);
    EXPECT_LE(max_diff(got.data() + row * vocab, ref.data() + done[i] * vocab, rest * vocab), 1e-5f)
        << "sequence " << i;
    row += rest;
  }
}

// The residual stream's fused path (each sublayer's last projection adds its output; the CUDA
// backend's decode steps) computes what the usual one does (the next norm adds it): the CPU backend
// told to take it gives the same logits bit for bit, for a prefill and three decode steps.
TEST_P(ModelBatch, FusedResidualPathEqualsTheUsualOne) {
  const auto dir = test::tiny_model(GetParam());
  auto usual_backend = make_cpu_backend();
  auto fused_backend = make_cpu_backend({.fuse_residual_add = true});
  Model usual(load_model_config(dir), WeightFiles::open(dir), *usual_backend);
  Model fused(load_model_config(dir), WeightFiles::open(dir), *fused_backend);
  const int vocab = usual.config().vocab_size;
  std::mt19937 rng(11);
  std::vector<int32_t> tokens(23);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % vocab);
  const std::vector<int32_t> table = {2, 0, 1};
  KvCache usual_cache = usual.allocate_kv_cache(3, kBlock), fused_cache = fused.allocate_kv_cache(3, kBlock);
  int done = 0;
  for (int len : {20, 1, 1, 1}) {
    StepBatch batch;
    batch.add_sequence(std::span(tokens).subspan(done, len), done, table, Logits::all);
    std::vector<float> a(static_cast<size_t>(len) * vocab), b(a.size());
    usual_backend->download(usual.forward(batch, usual_cache), a.data());
    fused_backend->download(fused.forward(batch, fused_cache), b.data());
    ASSERT_EQ(a, b) << "step at position " << done;
    done += len;
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, ModelBatch, ::testing::Values("tiny-llama", "tiny-qwen3-moe", "tiny-qwen2-moe"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

}  // namespace
}  // namespace troupe
