#include "engine/sampler.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <stdexcept>
#include <vector>

namespace troupe {
namespace {

SamplingParams seeded(double temperature, int64_t seed = 1234) {
  SamplingParams p;
  p.temperature = temperature;
  p.seed = seed;
  p.max_tokens = std::nullopt;
  return p;
}

std::vector<double> softmax(const std::vector<float>& logits, double temperature) {
  std::vector<double> p(logits.size());
  double max = *std::max_element(logits.begin(), logits.end()) / temperature;
  double sum = 0;
  for (size_t i = 0; i < logits.size(); ++i) sum += p[i] = std::exp(logits[i] / temperature - max);
  for (double& x : p) x /= sum;
  return p;
}

std::vector<int> histogram(SequenceSampler& sampler, const std::vector<float>& logits, int draws) {
  std::vector<int> counts(logits.size());
  for (int i = 0; i < draws; ++i) ++counts.at(sampler.sample(logits));
  return counts;
}

// Pearson's statistic over the cells with non-zero expectation; a cell drawn with zero expectation
// makes it infinite.
double chi_square(const std::vector<int>& counts, const std::vector<double>& probs) {
  if (counts.size() != probs.size()) throw std::logic_error("chi_square: counts and probs differ in size");
  double n = std::accumulate(counts.begin(), counts.end(), 0.0);
  double stat = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (probs[i] == 0) {
      if (counts[i] != 0) return INFINITY;
      continue;
    }
    double e = n * probs[i];
    stat += (counts[i] - e) * (counts[i] - e) / e;
  }
  return stat;
}

std::vector<int32_t> kept(const std::vector<float>& weights, double min_p, int32_t top_k, double top_p) {
  std::vector<float> scratch;
  float tau = filter_threshold(weights, min_p, top_k, top_p, scratch);
  std::vector<int32_t> ids;
  for (size_t i = 0; i < weights.size(); ++i)
    if (weights[i] >= tau && weights[i] > 0) ids.push_back(static_cast<int32_t>(i));
  return ids;
}

using Ids = std::vector<int32_t>;

// ---- Rng ---------------------------------------------------------------------------------------------

TEST(Rng, MatchesIndependentXoshiro256StarStar) {
  // Expected values from a separate Python implementation of splitmix64 seeding + xoshiro256**
  // (whose splitmix64 gives the published 0xe220a8397b1dcdaf for state 0).
  Rng rng(42);
  EXPECT_EQ(rng.next(), 0x15780b2e0c2ec716ull);
  EXPECT_EQ(rng.next(), 0x6104d9866d113a7eull);
  EXPECT_EQ(rng.next(), 0xae17533239e499a1ull);
  Rng again(42);
  EXPECT_DOUBLE_EQ(again.uniform(), 0.08386297105988216);
  EXPECT_DOUBLE_EQ(again.uniform(), 0.3789802506626686);
}

TEST(Rng, UniformStaysInHalfOpenUnitInterval) {
  Rng rng(7);
  double lo = 1, hi = 0, sum = 0;
  for (int i = 0; i < 100000; ++i) {
    double u = rng.uniform();
    lo = std::min(lo, u);
    hi = std::max(hi, u);
    sum += u;
  }
  EXPECT_GE(lo, 0.0);
  EXPECT_LT(hi, 1.0);
  EXPECT_NEAR(sum / 100000, 0.5, 0.005);
}

TEST(Rng, FreshSeedsDiffer) { EXPECT_NE(fresh_seed(), fresh_seed()); }

// ---- greedy ------------------------------------------------------------------------------------------

TEST(Greedy, ArgmaxWithTiesToLowestId) {
  EXPECT_EQ(argmax(std::vector<float>{1, 3, 3, 2}), 1);
  EXPECT_EQ(argmax(std::vector<float>{-5, -1, -3}), 1);
  EXPECT_EQ(argmax(std::vector<float>{7}), 0);
  EXPECT_EQ(argmax(std::vector<float>{}), -1);

  for (double t : {0.0, 1e-6}) {
    SamplingParams p = seeded(t);
    p.top_k = 3;  // ignored when greedy
    SequenceSampler s(p, {});
    EXPECT_EQ(s.sample(std::vector<float>{0.5f, 2.0f, -1.0f, 2.0f}), 1) << "temperature " << t;
    EXPECT_EQ(s.sample(std::vector<float>{0.5f, 2.0f, -1.0f, 2.5f}), 3) << "temperature " << t;
  }
}

TEST(Greedy, UnseededGreedyIsDeterministic) {
  SamplingParams p;
  p.temperature = 0;
  SequenceSampler a(p, {}), b(p, {});
  std::vector<float> logits{0.1f, 0.4f, 0.3f};
  for (int i = 0; i < 10; ++i) EXPECT_EQ(a.sample(logits), b.sample(logits));
}

// ---- temperature -------------------------------------------------------------------------------------

TEST(Temperature, DrawsFollowSoftmaxOfScaledLogits) {
  const std::vector<float> logits{1.0f, 2.0f, 0.5f, -1.0f, 3.0f};
  const int draws = 200000;
  for (double t : {0.7, 1.0, 2.5}) {
    SequenceSampler s(seeded(t), {});
    auto counts = histogram(s, logits, draws);
    auto expected = softmax(logits, t);
    // 4 degrees of freedom: P(χ² > 25) ≈ 5e-5, and the seed is fixed, so this cannot flake.
    EXPECT_LT(chi_square(counts, expected), 25.0) << "temperature " << t;
    for (size_t i = 0; i < logits.size(); ++i) {
      double sigma = std::sqrt(expected[i] * (1 - expected[i]) / draws);
      EXPECT_NEAR(counts[i] / double(draws), expected[i], 5 * sigma) << "token " << i << " temperature " << t;
    }
    // The test has power: the same counts are far from the unscaled softmax unless t == 1.
    if (t != 1.0) {
      EXPECT_GT(chi_square(counts, softmax(logits, 1.0)), 1000.0) << "temperature " << t;
    }
  }
}

TEST(Temperature, MaskedLogitsAreNeverDrawn) {
  const float ninf = -INFINITY;
  SequenceSampler s(seeded(1.0), {});
  auto counts = histogram(s, {ninf, 0.0f, ninf, 0.0f}, 2000);
  EXPECT_EQ(counts[0], 0);
  EXPECT_EQ(counts[2], 0);
  EXPECT_GT(counts[1], 800);
  EXPECT_GT(counts[3], 800);
  // Everything masked: nothing to draw from, token 0 by the argmax tie rule.
  EXPECT_EQ(s.sample(std::vector<float>{ninf, ninf}), 0);
}

// ---- top_k -------------------------------------------------------------------------------------------

std::vector<float> random_logits(size_t vocab, uint64_t seed, double scale = 4.0) {
  Rng rng(seed);
  std::vector<float> logits(vocab);
  for (float& x : logits) x = static_cast<float>((rng.uniform() - 0.5) * scale);
  return logits;
}

TEST(TopK, OneIsGreedy) {
  for (uint64_t trial = 0; trial < 50; ++trial) {
    auto logits = random_logits(1000, trial);
    SamplingParams p = seeded(1.5, trial);
    p.top_k = 1;
    SequenceSampler s(p, {});
    for (int i = 0; i < 5; ++i) EXPECT_EQ(s.sample(logits), argmax(logits));
  }
}

TEST(TopK, NeverLeavesTheKBestAndRenormalises) {
  auto logits = random_logits(50, 99);
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  SamplingParams p = seeded(1.0);
  p.top_k = 5;
  SequenceSampler s(p, {});
  auto counts = histogram(s, logits, 50000);
  std::vector<double> expected(logits.size(), 0.0);
  double sum = 0;
  for (int i = 0; i < 5; ++i) sum += expected[order[i]] = std::exp(logits[order[i]]);
  for (double& e : expected) e /= sum;
  // Infinite if any token outside the 5 best was drawn; 4 degrees of freedom otherwise.
  EXPECT_LT(chi_square(counts, expected), 25.0);
  for (int i = 0; i < 5; ++i) EXPECT_GT(counts[order[i]], 0);
}

TEST(TopK, TiesAtTheKthValueAllSurvive) {
  // vLLM masks logits below the k-th largest, so equal values at the boundary stay.
  EXPECT_EQ(kept({0.25f, 0.25f, 0.125f, 0.5f}, 0, 2, 1.0), (Ids{0, 1, 3}));
  EXPECT_EQ(kept({0.25f, 0.25f, 0.125f, 0.5f}, 0, 1, 1.0), (Ids{3}));
  EXPECT_EQ(kept({0.25f, 0.25f, 0.125f, 0.5f}, 0, 3, 1.0), (Ids{0, 1, 3}));
  EXPECT_EQ(kept({0.25f, 0.25f, 0.125f, 0.5f}, 0, 10, 1.0), (Ids{0, 1, 2, 3}));
  SamplingParams p = seeded(1.0);
  p.top_k = 1;
  SequenceSampler s(p, {});
  auto counts = histogram(s, {3.0f, 1.0f, 3.0f, 0.0f}, 4000);
  EXPECT_EQ(counts[1] + counts[3], 0);
  EXPECT_GT(counts[0], 1800);
  EXPECT_GT(counts[2], 1800);
}

// ---- top_p -------------------------------------------------------------------------------------------

TEST(TopP, SmallestPrefixReachingTopPWithExactSums) {
  // Dyadic probabilities make every cumulative sum exact. Sorted: 0.5 (id 1), 0.25 (id 3), then 0.125
  // twice (ids 0 and 2).
  const std::vector<float> w{0.125f, 0.5f, 0.125f, 0.25f};
  EXPECT_EQ(kept(w, 0, 0, 1e-9), (Ids{1}));
  EXPECT_EQ(kept(w, 0, 0, 0.5), (Ids{1}));  // 0.5 reaches 0.5 exactly: nothing more
  EXPECT_EQ(kept(w, 0, 0, 0.5000001), (Ids{1, 3}));
  EXPECT_EQ(kept(w, 0, 0, 0.75), (Ids{1, 3}));
  // 0.875 would do, but the other 0.125 ties with the boundary token and stays too.
  EXPECT_EQ(kept(w, 0, 0, 0.7500001), (Ids{0, 1, 2, 3}));
  EXPECT_EQ(kept(w, 0, 0, 1.0), (Ids{0, 1, 2, 3}));
  // Scale does not matter: weights need not be normalised.
  EXPECT_EQ(kept({1.0f, 4.0f, 1.0f, 2.0f}, 0, 0, 0.75), (Ids{1, 3}));
  EXPECT_EQ(kept({1.0f, 4.0f, 1.0f, 2.0f}, 0, 0, 0.5), (Ids{1}));
}

TEST(TopP, SamplingStaysInTheNucleus) {
  const std::vector<float> logits{std::log(0.1f), std::log(0.6f), std::log(0.3f)};
  SamplingParams p = seeded(1.0);
  p.top_p = 0.5;
  SequenceSampler only_best(p, {});
  EXPECT_EQ(histogram(only_best, logits, 1000), (std::vector<int>{0, 1000, 0}));
  p.top_p = 0.8;
  SequenceSampler two(p, {});
  auto counts = histogram(two, logits, 30000);
  EXPECT_LT(chi_square(counts, {0.0, 2.0 / 3, 1.0 / 3}), 15.0);
}

TEST(TopP, LongNucleusAcrossSortChunks) {
  // A flat distribution over 100k tokens needs thousands of tokens to reach top_p, which exercises the
  // incremental partial sort; compare with a full sort.
  auto logits = random_logits(100000, 5, 1.0);
  std::vector<float> w(logits.size());
  for (size_t i = 0; i < w.size(); ++i) w[i] = std::exp(logits[i]);
  for (double top_p : {0.01, 0.3, 0.9, 0.999}) {
    std::vector<float> sorted = w;
    std::sort(sorted.begin(), sorted.end(), std::greater<float>());
    double total = 0;
    for (float x : sorted) total += x;
    double cumulative = 0;
    float boundary = sorted.back();
    for (float x : sorted)
      if ((cumulative += x) >= top_p * total) {
        boundary = x;
        break;
      }
    std::vector<float> scratch;
    EXPECT_EQ(filter_threshold(w, 0, 0, top_p, scratch), boundary) << "top_p " << top_p;
  }
}

// ---- min_p and the order of filters ------------------------------------------------------------------

TEST(MinP, DropsTokensBelowMinPTimesTheMaximum) {
  const std::vector<float> w{0.25f, 1.0f, 0.125f, 0.5f};
  EXPECT_EQ(kept(w, 0.0, 0, 1.0), (Ids{0, 1, 2, 3}));
  EXPECT_EQ(kept(w, 0.25, 0, 1.0), (Ids{0, 1, 3}));  // 0.25 is not below 0.25 × 1
  EXPECT_EQ(kept(w, 0.3, 0, 1.0), (Ids{1, 3}));
  EXPECT_EQ(kept(w, 1.0, 0, 1.0), (Ids{1}));
  EXPECT_EQ(kept({0.75f, 3.0f, 0.375f, 1.5f}, 0.25, 0, 1.0), (Ids{0, 1, 3}));  // relative to the max

  SamplingParams p = seeded(1.0);
  p.min_p = 0.2;  // logits below ln 0.2 under the maximum go
  SequenceSampler s(p, {});
  auto counts = histogram(s, {0.0f, -1.0f, -2.0f, -3.0f}, 20000);
  EXPECT_EQ(counts[2] + counts[3], 0);
  EXPECT_LT(chi_square(counts, softmax({0.0f, -1.0f, -INFINITY, -INFINITY}, 1.0)), 15.0);
}

TEST(Filters, EachActsOnWhatThePreviousLeft) {
  // min_p 0.5 leaves {0.5, 0.25} → renormalised {2/3, 1/3}; top_p 0.6 then keeps only the first.
  // On the original distribution top_p 0.6 would have kept two tokens.
  EXPECT_EQ(kept({0.5f, 0.25f, 0.125f, 0.125f}, 0.5, 0, 0.6), (Ids{0}));
  EXPECT_EQ(kept({0.5f, 0.25f, 0.125f, 0.125f}, 0.0, 0, 0.6), (Ids{0, 1}));
  // top_k 2 leaves {0.4, 0.3} → {4/7, 3/7}; top_p 0.5 keeps only the first.
  EXPECT_EQ(kept({0.4f, 0.3f, 0.2f, 0.1f}, 0, 2, 0.5), (Ids{0}));
  EXPECT_EQ(kept({0.4f, 0.3f, 0.2f, 0.1f}, 0, 0, 0.5), (Ids{0, 1}));
  // min_p and top_k: the stricter wins.
  EXPECT_EQ(kept({0.4f, 0.3f, 0.2f, 0.1f}, 0.4, 3, 1.0), (Ids{0, 1, 2}));
  EXPECT_EQ(kept({0.4f, 0.3f, 0.2f, 0.1f}, 0.6, 3, 1.0), (Ids{0, 1}));
}

TEST(Filters, MatchBruteForceOnRandomWeightsWithTies) {
  // Reference: explicit sets on a fully sorted copy, the definitions in sampler.hpp read literally.
  auto reference = [](const std::vector<float>& w, double min_p, int32_t top_k, double top_p) {
    std::vector<int32_t> ids(w.size());
    std::iota(ids.begin(), ids.end(), 0);
    std::vector<int32_t> live;
    float max = *std::max_element(w.begin(), w.end());
    for (int32_t i : ids)
      if (w[i] > 0 && !(double(w[i]) < min_p * max)) live.push_back(i);
    std::sort(live.begin(), live.end(), [&](int32_t a, int32_t b) { return w[a] > w[b]; });
    if (top_k > 0 && size_t(top_k) < live.size()) {
      float kth = w[live[top_k - 1]];
      std::erase_if(live, [&](int32_t i) { return w[i] < kth; });
    }
    if (top_p < 1) {
      double total = 0;
      for (int32_t i : live) total += w[i];
      double before = 0;
      float boundary = 0;
      for (int32_t i : live) {
        if (before < top_p * total) boundary = w[i];
        before += w[i];
      }
      std::erase_if(live, [&](int32_t i) { return w[i] < boundary; });
    }
    std::sort(live.begin(), live.end());
    return live;
  };
  Rng rng(2024);
  for (int trial = 0; trial < 500; ++trial) {
    std::vector<float> w(1 + rng.next() % 300);
    for (float& x : w) x = static_cast<float>(rng.next() % 16) / 16.0f;  // coarse: many ties, some zeros
    w[rng.next() % w.size()] = 1.0f;
    double min_p = (rng.next() % 3 == 0) ? rng.uniform() : 0.0;
    int32_t top_k = (rng.next() % 2 == 0) ? static_cast<int32_t>(rng.next() % 40) : 0;
    double top_p = (rng.next() % 2 == 0) ? 0.01 + 0.99 * rng.uniform() : 1.0;
    ASSERT_EQ(kept(w, min_p, top_k, top_p), reference(w, min_p, top_k, top_p))
        << "trial " << trial << " min_p " << min_p << " top_k " << top_k << " top_p " << top_p;
  }
}

TEST(SampleFrom, InverseCdfInIdOrder) {
  const std::vector<float> w{1.0f, 0.0f, 2.0f, 1.0f};  // cumulative 1, 1, 3, 4 of 4
  EXPECT_EQ(sample_from(w, 0.0f, 0.0), 0);
  EXPECT_EQ(sample_from(w, 0.0f, 0.2499), 0);
  EXPECT_EQ(sample_from(w, 0.0f, 0.25), 2);  // cumulative must exceed u · total; id 1 weighs nothing
  EXPECT_EQ(sample_from(w, 0.0f, 0.7499), 2);
  EXPECT_EQ(sample_from(w, 0.0f, 0.75), 3);
  EXPECT_EQ(sample_from(w, 0.0f, 0.9999999), 3);
  EXPECT_EQ(sample_from(w, 1.5f, 0.0), 2);  // below the threshold: ids 0 and 3 are out
  EXPECT_EQ(sample_from(w, 1.5f, 0.9999999), 2);
  EXPECT_EQ(sample_from(std::vector<float>{0.0f, 0.0f}, 0.0f, 0.5), -1);
}

// ---- penalties ---------------------------------------------------------------------------------------

// Prompt {0, 1, 1}; output 3, 3, 4. All values are dyadic, so float arithmetic is exact.
const std::vector<float> kPenaltyLogits{2.0f, -1.0f, 0.5f, 3.0f, -2.0f, 1.0f};

std::vector<float> penalised(double repetition, double frequency, double presence) {
  SamplingParams p = seeded(1.0);
  p.repetition_penalty = repetition;
  p.frequency_penalty = frequency;
  p.presence_penalty = presence;
  const std::vector<int32_t> prompt{0, 1, 1};
  SequenceSampler s(p, prompt);
  for (int32_t t : {3, 3, 4}) s.accept(t);
  std::vector<float> logits = kPenaltyLogits;
  s.apply_penalties(logits);
  return logits;
}

TEST(Penalties, Repetition) {
  // Prompt and output tokens {0, 1, 3, 4}: positive logits divided by 2, negative ones multiplied.
  EXPECT_EQ(penalised(2.0, 0, 0), (std::vector<float>{1.0f, -2.0f, 0.5f, 1.5f, -4.0f, 1.0f}));
  EXPECT_EQ(penalised(0.5, 0, 0), (std::vector<float>{4.0f, -0.5f, 0.5f, 6.0f, -1.0f, 1.0f}));
}

TEST(Penalties, FrequencyCountsOutputTokensOnly) {
  // Token 3 twice, token 4 once; prompt tokens 0 and 1 untouched.
  EXPECT_EQ(penalised(1.0, 0.5, 0), (std::vector<float>{2.0f, -1.0f, 0.5f, 2.0f, -2.5f, 1.0f}));
}

TEST(Penalties, PresenceOncePerDistinctOutputToken) {
  EXPECT_EQ(penalised(1.0, 0, 0.25), (std::vector<float>{2.0f, -1.0f, 0.5f, 2.75f, -2.25f, 1.0f}));
  EXPECT_EQ(penalised(1.0, 0, -1.0), (std::vector<float>{2.0f, -1.0f, 0.5f, 4.0f, -1.0f, 1.0f}));
}

TEST(Penalties, RepetitionFirstThenFrequencyAndPresence) {
  // Token 3: 3 / 2 − (0.5·2 + 0.25) = 0.25; token 4: −2·2 − (0.5 + 0.25) = −4.75.
  EXPECT_EQ(penalised(2.0, 0.5, 0.25), (std::vector<float>{1.0f, -2.0f, 0.5f, 0.25f, -4.75f, 1.0f}));
}

TEST(Penalties, TokenInPromptAndOutputIsPenalisedOnce) {
  SamplingParams p = seeded(0);
  p.repetition_penalty = 2.0;
  const std::vector<int32_t> prompt{1, 1, 7};  // 7 is outside the vocabulary: ignored
  SequenceSampler s(p, prompt);
  s.accept(1);
  s.accept(1);
  std::vector<float> logits{0.0f, 3.0f};
  s.apply_penalties(logits);
  EXPECT_EQ(logits, (std::vector<float>{0.0f, 1.5f}));
}

TEST(Penalties, ChangeWhatGreedyPicks) {
  SamplingParams p = seeded(0);
  p.presence_penalty = 0.5;
  SequenceSampler s(p, {});
  const std::vector<float> logits{2.0f, 1.75f};
  EXPECT_EQ(s.sample(logits), 0);
  s.accept(0);
  EXPECT_EQ(s.sample(logits), 1);  // 2 − 0.5 < 1.75
}

// ---- min_tokens, stop tokens, max_tokens -------------------------------------------------------------

TEST(Stop, MinTokensMasksStopTokensUntilReached) {
  SamplingParams p = seeded(0);
  p.min_tokens = 2;
  p.stop_token_ids = {2};
  const std::vector<int32_t> eos{3};
  SequenceSampler s(p, {}, eos);
  const std::vector<float> logits{0.0f, 1.0f, 5.0f, 6.0f};
  std::vector<float> masked = logits;
  s.apply_min_tokens(masked);
  EXPECT_EQ(masked, (std::vector<float>{0.0f, 1.0f, -INFINITY, -INFINITY}));
  EXPECT_EQ(s.sample(logits), 1);
  EXPECT_EQ(s.accept(3), FinishReason::none);  // chosen elsewhere: still no stop as the first token
  EXPECT_EQ(s.sample(logits), 1);              // one token so far: still masked
  EXPECT_EQ(s.accept(1), FinishReason::none);
  EXPECT_EQ(s.sample(logits), 3);
  EXPECT_EQ(s.accept(3), FinishReason::stop);
}

TEST(Stop, IgnoreEosKeepsStopTokenIdsOnly) {
  SamplingParams p = seeded(0);
  p.ignore_eos = true;
  p.stop_token_ids = {5};
  p.min_tokens = 1;
  const std::vector<int32_t> eos{3};
  SequenceSampler s(p, {}, eos);
  EXPECT_FALSE(s.is_stop_token(3));
  EXPECT_TRUE(s.is_stop_token(5));
  std::vector<float> logits(6, 0.0f);
  s.apply_min_tokens(logits);
  EXPECT_EQ(logits[3], 0.0f);
  EXPECT_EQ(logits[5], -INFINITY);
  EXPECT_EQ(s.accept(3), FinishReason::none);
  EXPECT_EQ(s.accept(5), FinishReason::stop);
}

TEST(Stop, MaxTokensEndsWithLengthAndWinsOverStop) {
  SamplingParams p = seeded(0);
  p.max_tokens = 3;
  const std::vector<int32_t> eos{9};
  SequenceSampler s(p, {}, eos);
  EXPECT_EQ(s.accept(1), FinishReason::none);
  EXPECT_EQ(s.accept(2), FinishReason::none);
  EXPECT_EQ(s.accept(9), FinishReason::length);
  EXPECT_EQ(s.num_output_tokens(), 3);

  SequenceSampler early(p, {}, eos);
  EXPECT_EQ(early.accept(9), FinishReason::stop);
}

// ---- seeds -------------------------------------------------------------------------------------------

std::vector<int32_t> generate(SamplingParams p, int steps) {
  SequenceSampler s(p, std::vector<int32_t>{1, 2, 3});
  std::vector<int32_t> out;
  for (int i = 0; i < steps; ++i) {
    auto logits = random_logits(500, 1000 + i);  // a fixed sequence of logits
    int32_t t = s.sample(logits);
    s.accept(t);
    out.push_back(t);
  }
  return out;
}

TEST(Seed, SameSeedSameTokensDifferentSeedDifferentTokens) {
  SamplingParams p = seeded(0.9, 17);
  p.top_p = 0.95;
  p.top_k = 100;
  p.repetition_penalty = 1.1;
  p.frequency_penalty = 0.2;
  auto a = generate(p, 100);
  EXPECT_EQ(a, generate(p, 100));
  p.seed = 18;
  EXPECT_NE(a, generate(p, 100));
  p.seed = std::nullopt;  // each unseeded request gets its own stream
  EXPECT_NE(generate(p, 100), generate(p, 100));
}

// ---- logprobs ----------------------------------------------------------------------------------------

TEST(Logprobs, RawLogSoftmaxTopNAndRank) {
  const std::vector<float> logits{1.0f, 2.0f, 3.0f, 0.5f, 2.0f};
  const double log_z = std::log(std::exp(1.0) + 2 * std::exp(2.0) + std::exp(3.0) + std::exp(0.5));
  SampleResult r;
  compute_logprobs(logits, 4, 3, r);
  EXPECT_EQ(r.token, 4);
  EXPECT_NEAR(r.logprob, 2.0 - log_z, 1e-6);
  EXPECT_EQ(r.rank, 2);  // only logit 3 is strictly larger
  ASSERT_EQ(r.top.size(), 3u);
  EXPECT_EQ(r.top[0].token, 2);
  EXPECT_EQ(r.top[1].token, 1);  // tie with id 4: lower id first
  EXPECT_EQ(r.top[2].token, 4);
  EXPECT_NEAR(r.top[0].logprob, 3.0 - log_z, 1e-6);
  EXPECT_NEAR(r.top[1].logprob, 2.0 - log_z, 1e-6);
  EXPECT_NEAR(r.top[2].logprob, 2.0 - log_z, 1e-6);

  compute_logprobs(logits, 3, 50, r);  // more than the vocabulary: all of it
  ASSERT_EQ(r.top.size(), 5u);
  EXPECT_EQ(r.top.back().token, 3);
  EXPECT_EQ(r.rank, 5);
}

TEST(Logprobs, AreOfRawLogitsBeforePenaltiesAndTemperature) {
  const std::vector<float> logits{0.0f, 1.0f, 1.5f};
  const double log_z = std::log(1 + std::exp(1.0) + std::exp(1.5));
  SamplingParams p = seeded(0.3);
  p.presence_penalty = 2.0;
  p.logprobs = 2;
  SequenceSampler s(p, {});
  s.accept(2);  // token 2 is penalised to −0.5 for sampling, but not for logprobs
  SampleResult r;
  for (int i = 0; i < 20; ++i) {
    int32_t t = s.sample(logits, &r);
    EXPECT_EQ(r.token, t);
    EXPECT_NEAR(r.logprob, logits[t] - log_z, 1e-6);
    ASSERT_EQ(r.top.size(), 2u);
    EXPECT_EQ(r.top[0].token, 2);
    EXPECT_NEAR(r.top[0].logprob, 1.5 - log_z, 1e-6);
    EXPECT_EQ(r.top[1].token, 1);
  }
  p.logprobs = std::nullopt;  // the sampled token's logprob still comes back
  SequenceSampler plain(p, {});
  plain.sample(logits, &r);
  EXPECT_TRUE(r.top.empty());
  EXPECT_NEAR(r.logprob, logits[r.token] - log_z, 1e-6);
}

// ---- batch -------------------------------------------------------------------------------------------

TEST(Batch, RowsMatchTheirSequencesSampledAlone) {
  const size_t vocab = 300;
  std::vector<float> logits;
  for (uint64_t r = 0; r < 3; ++r) {
    auto row = random_logits(vocab, 50 + r);
    logits.insert(logits.end(), row.begin(), row.end());
  }
  std::vector<SamplingParams> params{seeded(0), seeded(0.8, 5), seeded(1.2, 6)};
  params[1].top_k = 20;
  params[2].logprobs = 3;
  std::vector<SequenceSampler> batch_samplers, alone;
  for (auto& p : params) {
    batch_samplers.emplace_back(p, std::span<const int32_t>{});
    alone.emplace_back(p, std::span<const int32_t>{});
  }
  std::vector<SequenceSampler*> ptrs;
  for (auto& s : batch_samplers) ptrs.push_back(&s);
  std::vector<int32_t> tokens(3);
  std::vector<SampleResult> results(3);
  for (int step = 0; step < 10; ++step) {
    sample_batch(logits, vocab, ptrs, tokens, results);
    for (size_t r = 0; r < 3; ++r) {
      SampleResult single;
      EXPECT_EQ(tokens[r], alone[r].sample(std::span(logits).subspan(r * vocab, vocab), &single));
      EXPECT_EQ(results[r].logprob, single.logprob);
      EXPECT_EQ(results[r].top.size(), r == 2 ? 3u : 0u);
    }
  }
  EXPECT_EQ(tokens[0], argmax(std::span(logits).subspan(0, vocab)));
  std::vector<int32_t> two(2);
  EXPECT_THROW(sample_batch(logits, vocab, ptrs, two), std::invalid_argument);
}

// ---- validation --------------------------------------------------------------------------------------

TEST(Validate, DefaultsAndBoundsAreValid) {
  EXPECT_EQ(SamplingParams{}.check(), std::nullopt);
  SamplingParams p;
  p.temperature = 0;
  p.top_p = 1;
  p.top_k = -1;
  p.min_p = 1;
  p.presence_penalty = -2;
  p.frequency_penalty = 2;
  p.repetition_penalty = 0.01;
  p.max_tokens = 1;
  p.min_tokens = 1;
  p.logprobs = 20;
  EXPECT_EQ(p.check(), std::nullopt);
  EXPECT_NO_THROW(p.validate());
}

TEST(Validate, MessagesNameTheParameter) {
  struct Case {
    std::function<void(SamplingParams&)> set;
    const char* message;
  };
  const std::vector<Case> cases{
      {[](auto& p) { p.temperature = -1; }, "temperature must be non-negative, got -1.0"},
      {[](auto& p) { p.temperature = NAN; }, "temperature must be non-negative, got nan"},
      {[](auto& p) { p.temperature = INFINITY; }, "temperature must be finite, got inf"},
      {[](auto& p) { p.top_p = 0; }, "top_p must be in (0, 1], got 0.0"},
      {[](auto& p) { p.top_p = 1.5; }, "top_p must be in (0, 1], got 1.5"},
      {[](auto& p) { p.top_k = -2; }, "top_k must be -1 or 0 (disabled), or at least 1, got -2"},
      {[](auto& p) { p.min_p = -0.1; }, "min_p must be in [0, 1], got -0.1"},
      {[](auto& p) { p.min_p = 1.01; }, "min_p must be in [0, 1], got 1.01"},
      {[](auto& p) { p.repetition_penalty = 0; }, "repetition_penalty must be greater than zero, got 0.0"},
      {[](auto& p) { p.repetition_penalty = -1.5; }, "repetition_penalty must be greater than zero, got -1.5"},
      {[](auto& p) { p.presence_penalty = 2.5; }, "presence_penalty must be in [-2, 2], got 2.5"},
      {[](auto& p) { p.frequency_penalty = -3; }, "frequency_penalty must be in [-2, 2], got -3.0"},
      {[](auto& p) { p.max_tokens = 0; }, "max_tokens must be at least 1, got 0"},
      {[](auto& p) { p.min_tokens = -1; }, "min_tokens must be non-negative, got -1"},
      {[](auto& p) { p.min_tokens = 17; }, "min_tokens must be less than or equal to max_tokens (16), got 17"},
      {[](auto& p) { p.stop_token_ids = {3, -4}; }, "stop_token_ids must be non-negative token ids, got -4"},
      {[](auto& p) { p.logprobs = -1; }, "logprobs must be in [0, 20], got -1"},
      {[](auto& p) { p.logprobs = 21; }, "logprobs must be in [0, 20], got 21"},
  };
  for (const auto& c : cases) {
    SamplingParams p;
    c.set(p);
    EXPECT_EQ(p.check(), std::optional<std::string>(c.message));
    try {
      p.validate();
      ADD_FAILURE() << "no throw for: " << c.message;
    } catch (const std::invalid_argument& e) {
      EXPECT_STREQ(e.what(), c.message);
    }
  }
}

}  // namespace
}  // namespace troupe
