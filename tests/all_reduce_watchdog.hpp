// For multi-GPU all-reduce tests: ends the program when a test runs far past its expected time.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

namespace troupe::test {

// Ends the program when a test runs far past its expected time: a rank stuck waiting for a peer
// would otherwise hang until ctest's timeout, without saying where.
class AllReduceWatchdog {
 public:
  explicit AllReduceWatchdog(std::chrono::seconds limit)
      : thread_([this, limit] {
          std::unique_lock lock(mutex_);
          if (cv_.wait_for(lock, limit, [this] { return done_; })) return;
          std::fprintf(stderr,
                       "%s: not finished after %lld s; a rank is probably spinning in the all-reduce kernel "
                       "for a peer that never arrived\n",
                       ::testing::UnitTest::GetInstance()->current_test_info()->name(),
                       static_cast<long long>(limit.count()));
          std::abort();
        }) {}
  ~AllReduceWatchdog() {
    {
      std::lock_guard lock(mutex_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace troupe::test
