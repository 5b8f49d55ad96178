// A worker whose step fails (--inject-fault, as a failed CUDA or NCCL call would) kills the engine
// cleanly and fast: every request in flight ends with the cause within seconds, on every
// data-parallel rank, the runtime reports itself unhealthy, a later request is refused at once, and
// no KV block stays held. CPU backend, tiny models, layouts whose failed rank has peers (tp2,
// tp2·pp2), replicas that must be told (dp2), and MoE ranks that step together (dp2 with EP).
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "config/error.hpp"
#include "tests/runtime_support.hpp"
#include "tests/test_support.hpp"

namespace troupe {
namespace {

using Clock = std::chrono::steady_clock;


// 8 greedy requests long enough to run past any step a test injects a fault at.
std::vector<test::Job> long_jobs(int vocab) {
  std::vector<test::Job> jobs = test::mixed_jobs(8, vocab, 11);
  for (test::Job& j : jobs) j.params.max_tokens = 64;
  return jobs;
}

void expect_clean_failure(RuntimeOptions options, int rank, int64_t step) {
  options.inject_fault_rank = rank;
  options.inject_fault_step = step;
  Runtime runtime(options);
  EXPECT_TRUE(runtime.healthy());
  EXPECT_EQ(runtime.failure(), "");
  const std::vector<test::Job> jobs = long_jobs(runtime.model_config().vocab_size);
  const auto start = Clock::now();
  auto c = test::submit_collecting_finals(runtime, jobs);
  {
    std::unique_lock lock(c->m);
    ASSERT_TRUE(c->cv.wait_for(lock, std::chrono::seconds(10), [&] { return c->finished == jobs.size(); }))
        << c->finished << " of " << jobs.size() << " requests ended within 10 s of the fault";
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("%s: every request failed %.2f s after submission\n", options.parallel.name().c_str(), seconds);

  EXPECT_FALSE(runtime.healthy());
  const std::string failure = runtime.failure();
  EXPECT_EQ(failure.rfind("the engine failed: worker ", 0), 0u) << failure;
  EXPECT_NE(failure.find("fault injected at step " + std::to_string(step) + " (--inject-fault)"), std::string::npos)
      << failure;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const RequestEvent& e = c->finals[i];
    EXPECT_TRUE(e.aborted) << "request " << i;
    EXPECT_EQ(e.finish, FinishReason::none) << "request " << i << " finished as if nothing failed";
    EXPECT_EQ(e.error.rfind("the engine failed: ", 0), 0u) << "request " << i << ": " << e.error;
    EXPECT_NE(e.error.find("fault injected"), std::string::npos) << "request " << i << ": " << e.error;
  }

  // A request after the failure is refused at once, with the cause.
  const auto late = Clock::now();
  try {
    runtime.submit(jobs[0].prompt, jobs[0].params, [](const RequestEvent&) {});
    ADD_FAILURE() << "a request after the failure was accepted";
  } catch (const RequestError& e) {
    EXPECT_EQ(e.status(), 503);
    EXPECT_EQ(e.type(), "ServiceUnavailableError");
    EXPECT_EQ(std::string(e.what()), failure);
  }
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - late).count(), 1.0);

  // Every rank gave its blocks back: the frees go out before the requests hear of the failure, but
  // a grant in flight at the failure comes back a moment later.
  RuntimeStats stats;
  for (int tries = 0; tries < 50; ++tries) {
    stats = runtime.stats();
    if (stats.all_idle()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(stats.dp.size(), static_cast<size_t>(options.parallel.data_parallel_size));
  for (size_t d = 0; d < stats.dp.size(); ++d) {
    EXPECT_EQ(stats.dp[d].used_blocks, 0) << "dp" << d;
    EXPECT_EQ(stats.dp[d].running, 0) << "dp" << d;
    EXPECT_EQ(stats.dp[d].waiting, 0) << "dp" << d;
    EXPECT_TRUE(stats.dp[d].idle) << "dp" << d;
  }
}

TEST(RuntimeFault, Tp2FailsEveryRequestFast) { expect_clean_failure(test::tiny_options("tiny-qwen3", 2), 1, 3); }

// Rank 1 is data-parallel replica 1: replica 0 runs on, healthy, unless it is told.
TEST(RuntimeFault, Dp2FailsTheOtherReplicaToo) { expect_clean_failure(test::tiny_options("tiny-llama", 1, 1, 2), 1, 3); }

TEST(RuntimeFault, Tp2Pp2FailsEveryRequestFast) { expect_clean_failure(test::tiny_options("tiny-llama", 2, 2), 1, 3); }

// The MoE layers join the replicas: the coordinator must stop forming steps.
TEST(RuntimeFault, MoeDp2WithExpertParallelFailsEveryRequestFast) {
  expect_clean_failure(test::tiny_options("tiny-qwen3-moe", 1, 1, 2, true), 1, 3);
}

TEST(RuntimeFault, AFaultOnARankOutsideTheLayoutIsAConfigError) {
  RuntimeOptions o = test::tiny_options("tiny-qwen3", 2);
  o.inject_fault_rank = 2;
  o.inject_fault_step = 0;
  EXPECT_THROW(Runtime runtime(o), ConfigError);
}

}  // namespace
}  // namespace troupe
