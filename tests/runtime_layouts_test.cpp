// Every parallel layout of the actor runtime computes what one rank computes: for a tiny dense and a
// tiny MoE model, 16 concurrent requests of mixed lengths give the same greedy tokens as tp1, and
// the same log-probabilities to 1e-4. Afterwards no KV block is held.
#include <gtest/gtest.h>

#include <cmath>

#include "tests/runtime_support.hpp"

namespace troupe {
namespace {

struct Layout {
  int tp, pp, dp;
  bool ep;
  MoeExchange exchange = MoeExchange::all_to_all;  // with ep and dp > 1
};

std::string layout_name(const Layout& l) {
  return ParallelConfig{l.tp, l.pp, l.dp, l.ep}.name() +
         (l.exchange == MoeExchange::allgather_reducescatter ? " (allgather_reducescatter)" : "");
}

std::vector<test::Outcome> run(const std::string& preset, const Layout& l, const std::vector<test::Job>& jobs) {
  RuntimeOptions options = test::tiny_options(preset, l.tp, l.pp, l.dp, l.ep);
  options.moe_exchange = l.exchange;
  Runtime runtime(options);
  auto out = test::run_jobs(runtime, jobs);
  RuntimeStats stats = runtime.stats();
  EXPECT_TRUE(stats.all_idle()) << layout_name(l) << ": a KV block is still held after every request finished";
  runtime.reset_prefix_cache();
  for (const auto& d : runtime.stats().dp) {
    EXPECT_EQ(d.used_blocks, 0) << layout_name(l);
    EXPECT_EQ(d.cached_free_blocks, 0) << layout_name(l) << ": clearing the prefix cache released nothing";
  }
  return out;
}

class RuntimeLayouts : public ::testing::TestWithParam<std::string> {};

TEST_P(RuntimeLayouts, EveryLayoutMatchesOneRank) {
  const std::string preset = GetParam();
  const int vocab = 512;
  const auto jobs = test::mixed_jobs(16, vocab, 11, /*logprobs=*/5);
  const auto reference = run(preset, {1, 1, 1, false}, jobs);
  for (const Layout& l : std::vector<Layout>{{2, 1, 1, false},
                                             {1, 2, 1, false},
                                             {1, 1, 2, false},
                                             {2, 2, 1, false},
                                             {2, 1, 1, true},
                                             {1, 1, 2, true},
                                             {2, 1, 2, true},
                                             {1, 1, 2, true, MoeExchange::allgather_reducescatter},
                                             {2, 1, 2, true, MoeExchange::allgather_reducescatter},
                                             {1, 2, 2, false}}) {
    const auto got = run(preset, l, jobs);
    float worst = 0.0f;
    for (size_t i = 0; i < jobs.size(); ++i) {
      ASSERT_TRUE(got[i].done);
      EXPECT_EQ(got[i].final.finish, FinishReason::length) << layout_name(l) << " request " << i;
      ASSERT_EQ(got[i].tokens.size(), reference[i].tokens.size()) << layout_name(l) << " request " << i;
      for (size_t k = 0; k < got[i].tokens.size(); ++k) {
        const TokenOut& a = got[i].tokens[k];
        const TokenOut& b = reference[i].tokens[k];
        ASSERT_EQ(a.token, b.token) << layout_name(l) << " request " << i << " token " << k;
        worst = std::max(worst, std::fabs(a.logprob - b.logprob));
        ASSERT_EQ(a.top.size(), b.top.size());
        for (size_t j = 0; j < a.top.size(); ++j) {
          EXPECT_EQ(a.top[j].token, b.top[j].token);
          worst = std::max(worst, std::fabs(a.top[j].logprob - b.top[j].logprob));
        }
      }
      EXPECT_EQ(got[i].final.prompt_tokens, static_cast<int>(jobs[i].prompt.size()));
      EXPECT_EQ(got[i].final.output_tokens, *jobs[i].params.max_tokens);
    }
    std::printf("%s %s: max |logprob - tp1| = %.3g\n", preset.c_str(), layout_name(l).c_str(), worst);
    EXPECT_LE(worst, 1e-4f) << layout_name(l);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, RuntimeLayouts, ::testing::Values("tiny-llama", "tiny-qwen3-moe"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

}  // namespace
}  // namespace troupe

namespace troupe {
namespace {

// A model with one kv head runs at tp 2 with the head replicated on both ranks, as vLLM does.
TEST(RuntimeLayoutsMqa, OneKvHeadReplicatedAtTp2MatchesTp1) {
  const auto jobs = test::mixed_jobs(16, 512, 21, 3);
  const auto one = run("tiny-llama-mqa", {1, 1, 1, false}, jobs);
  const auto two = run("tiny-llama-mqa", {2, 1, 1, false}, jobs);
  for (size_t i = 0; i < jobs.size(); ++i) {
    ASSERT_EQ(one[i].tokens.size(), two[i].tokens.size());
    for (size_t k = 0; k < one[i].tokens.size(); ++k) {
      EXPECT_EQ(one[i].tokens[k].token, two[i].tokens[k].token);
      EXPECT_NEAR(one[i].tokens[k].logprob, two[i].tokens[k].logprob, 1e-4);
    }
  }
}

}  // namespace
}  // namespace troupe

namespace troupe {
namespace {

// Dummy weights (--load-format dummy) are one model whatever the layout: each rank's slice holds the
// values that slice has in the whole tensor, so layouts of a model too big to write can be compared.
TEST(RuntimeLayoutsDummy, EveryRankHoldsItsSliceOfOneDummyModel) {
  const auto jobs = test::mixed_jobs(8, 512, 31, 3);
  auto run_dummy = [&](const Layout& l) {
    RuntimeOptions o = test::tiny_options("tiny-qwen3-moe", l.tp, l.pp, l.dp, l.ep);
    o.load_format = "dummy";
    Runtime runtime(o);
    return test::run_jobs(runtime, jobs);
  };
  const auto reference = run_dummy({1, 1, 1, false});
  for (const Layout& l : std::vector<Layout>{{2, 1, 1, false}, {2, 1, 1, true}, {1, 1, 2, false}}) {
    const auto got = run_dummy(l);
    for (size_t i = 0; i < jobs.size(); ++i) {
      ASSERT_EQ(got[i].tokens.size(), reference[i].tokens.size()) << layout_name(l);
      for (size_t k = 0; k < got[i].tokens.size(); ++k) {
        EXPECT_EQ(got[i].tokens[k].token, reference[i].tokens[k].token) << layout_name(l) << " request " << i;
        EXPECT_NEAR(got[i].tokens[k].logprob, reference[i].tokens[k].logprob, 1e-4) << layout_name(l);
      }
    }
  }
}

}  // namespace
}  // namespace troupe
