// Decode steps replayed as CUDA graphs give the tokens of eager steps after a prefill larger than
// any batch the graphs were captured for. Such a prefill used to grow an op's scratch (the MoE
// experts'), and the graphs went on reading the freed buffer: an illegal address on the first decode
// step, or silently wrong tokens where the allocator happened to hand the same address back.
//
// Not bit for bit: a graph's attention splits are planned for the longest context it may meet, an
// eager step's for the batch's own, and which requests share a step depends on when they reach the
// scheduler (eager runs of the same requests differ from one another in a tiny MoE model on an H100).
// So the graphs may leave the eager path only at a near-tie of its logits (test::greedy_departures,
// the rule the layouts test uses); memory read after it was freed gives no such near-tie.
#include <gtest/gtest.h>

#include <cstdio>
#include <random>

#include "config/model_config.hpp"
#include "kernels/cuda_backend.hpp"
#include "tests/runtime_support.hpp"
#include "tests/test_support.hpp"

namespace troupe {
namespace {

std::vector<test::Job> long_prompts(int vocab) {
  std::mt19937 rng(11);
  std::vector<test::Job> jobs;
  // One prompt of 1500 tokens alone in its step, then four that share steps.
  for (int len : {1500, 700, 900, 1100, 300}) {
    test::Job j;
    for (int i = 0; i < len; ++i) j.prompt.push_back(static_cast<int32_t>(rng() % vocab));
    j.params.temperature = 0;
    j.params.max_tokens = 24;
    j.params.ignore_eos = true;
    j.params.logprobs = 5;
    jobs.push_back(std::move(j));
  }
  return jobs;
}

std::vector<test::Outcome> run(const std::string& preset, bool eager, const std::vector<test::Job>& jobs) {
  RuntimeOptions o = test::tiny_options(preset);
  o.device = "cuda";
  o.enforce_eager = eager;
  o.max_model_len = 2048;
  o.max_num_batched_tokens = 4096;
  o.kv_cache_memory = int64_t{64} << 20;
  Runtime runtime(o);
  auto out = test::run_jobs(runtime, jobs, 120);
  EXPECT_TRUE(runtime.stats().all_idle()) << preset << ": a KV block is held after the run";
  return out;
}

class DecodeGraphsGpu : public ::testing::TestWithParam<std::string> {};

TEST_P(DecodeGraphsGpu, GraphsAfterLongPrefillsGiveEagerTokens) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: run on the GPU machine";
  const std::string preset = GetParam();
  const auto jobs = long_prompts(load_model_config(test::tiny_options(preset).model_dir).vocab_size);
  const auto eager = run(preset, true, jobs);
  const auto graphs = run(preset, false, jobs);
  for (size_t i = 0; i < jobs.size(); ++i) {
    ASSERT_TRUE(eager[i].final.error.empty()) << preset << " eager request " << i << ": " << eager[i].final.error;
    ASSERT_TRUE(graphs[i].final.error.empty()) << preset << " graph request " << i << ": " << graphs[i].final.error;
    ASSERT_EQ(static_cast<int>(graphs[i].tokens.size()), jobs[i].params.max_tokens) << preset << " request " << i;
  }
  const bool moe = load_model_config(test::tiny_options(preset).model_dir).num_experts > 0;
  const int departed =
      test::greedy_departures(preset + " graphs", eager, graphs, moe ? test::kMoeNearTie : test::kDenseNearTie);
  std::printf("%s: %d of %zu requests left the eager path (at near-ties)\n", preset.c_str(), departed, jobs.size());
}

INSTANTIATE_TEST_SUITE_P(Models, DecodeGraphsGpu, ::testing::Values("tiny-qwen3-moe", "tiny-llama", "tiny-mixtral"));

}  // namespace
}  // namespace troupe
