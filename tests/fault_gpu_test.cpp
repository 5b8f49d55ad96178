// A GPU worker whose step fails (--inject-fault, as a failed CUDA or NCCL call would) at tp2: its
// peer is then blocked for good (its NCCL all-reduce waits for the failed rank, and its host waits
// for that stream), yet all 8 requests in flight end with the error within 20 s, the runtime is
// unhealthy, and destroying it returns (it abandons the stuck worker, see ~Runtime) instead of
// joining that thread forever.
//
// Run all_gpu_tests by its path (the death test re-executes argv[0]). The scenario runs in a child
// process (a gtest death test, re-executed): the stuck thread and the
// spinning NCCL kernel die with it, and leave the GPUs to the tests after this one.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>

#include "kernels/cuda_backend.hpp"
#include "tests/runtime_support.hpp"
#include "tests/stack_watchdog.hpp"
#include "tests/test_support.hpp"

namespace troupe {
namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// The child: checks, prints what went wrong, and leaves with _Exit (threads may still be stuck).
[[noreturn]] void fail_one_gpu_worker(const std::filesystem::path& model) {
  // A hang is a failure too, not a stuck test run: the stacks of every thread say where it waits.
  test::start_watchdog(45);
  std::string problems;
  auto check = [&](bool ok, const std::string& what) {
    if (!ok) problems += "  " + what + "\n";
  };
  RuntimeOptions o;
  o.model_dir = model;
  o.parallel = {2, 1, 1, false};
  o.device = "cuda";
  o.kv_cache_memory = int64_t{256} << 20;
  o.max_model_len = 256;
  o.inject_fault_rank = 1;
  o.inject_fault_step = 5;
  o.log = [](const std::string& line) { std::fprintf(stderr, "    %s\n", line.c_str()); };
  double destroy_seconds = 0;
  {
    std::fprintf(stderr, "fault gpu: starting the runtime\n");
    auto runtime = std::make_unique<Runtime>(o);
    std::fprintf(stderr, "fault gpu: runtime ready, submitting\n");
    test::touch();
    std::vector<test::Job> jobs = test::mixed_jobs(8, runtime->model_config().vocab_size, 11);
    for (test::Job& j : jobs) j.params.max_tokens = 64;
    const auto start = Clock::now();
    auto c = test::submit_collecting_finals(*runtime, jobs);
    {
      std::unique_lock lock(c->m);
      const bool all = c->cv.wait_for(lock, std::chrono::seconds(20), [&] { return c->finished == jobs.size(); });
      check(all, std::to_string(c->finished) + " of 8 requests ended within 20 s of submission");
      for (size_t i = 0; i < jobs.size(); ++i) {
        const RequestEvent& e = c->finals[i];
        if (!e.final()) continue;  // counted above
        check(e.aborted && e.error.find("fault injected at step 5 (--inject-fault)") != std::string::npos,
              "request " + std::to_string(i) + " ended without the fault: '" + e.error + "'");
      }
    }
    std::fprintf(stderr, "fault gpu: requests ended %.2f s after submission\n", since(start));
    test::touch();
    check(!runtime->healthy(), "the runtime is still healthy");
    check(runtime->failure().find("fault injected") != std::string::npos, "failure() is '" + runtime->failure() + "'");
    std::fprintf(stderr, "fault gpu: destroying the runtime\n");
    const auto destroying = Clock::now();
    runtime.reset();
    destroy_seconds = since(destroying);
  }
  check(destroy_seconds < Runtime::kAbandonAfterSeconds + 5,
        "destroying the failed runtime took " + std::to_string(destroy_seconds) + " s");
  std::fprintf(stderr, "fault gpu: the runtime was destroyed in %.2f s\n", destroy_seconds);
  if (!problems.empty()) {
    std::fprintf(stderr, "fault gpu: FAILED\n%s", problems.c_str());
    std::fflush(stderr);
    std::_Exit(1);
  }
  std::fprintf(stderr, "fault gpu: ok\n");
  std::fflush(stderr);
  std::_Exit(0);
}

TEST(FaultGpu, Tp2WorkerFailureEndsEveryRequestAndTheRuntimeStillGoesAway) {
  const int gpus = cuda_device_count();
  if (gpus < 2) GTEST_SKIP() << gpus << " CUDA device(s): a tp2 fault needs 2 GPUs (run on nvidia-h100-x2)";
  const std::filesystem::path model = test::tiny_model("tiny-qwen3");
  // Re-executed rather than forked: this process has a CUDA context already.
  ::testing::GTEST_FLAG(death_test_style) = "threadsafe";
  EXPECT_EXIT(fail_one_gpu_worker(model), ::testing::ExitedWithCode(0), "fault gpu: ok");
}

}  // namespace
}  // namespace troupe
