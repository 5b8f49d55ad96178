#include "tests/stack_watchdog.hpp"

#include <dirent.h>
#include <execinfo.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

namespace troupe::test {
namespace {

void print_stack(int) {
  void* frames[64];
  const int n = backtrace(frames, 64);
  char head[64];
  const int len = std::snprintf(head, sizeof head, "--- thread %ld\n", static_cast<long>(syscall(SYS_gettid)));
  (void)!write(2, head, len);
  backtrace_symbols_fd(frames, n, 2);
}

std::atomic<int64_t> progress_at{0};

}  // namespace

void touch() { progress_at = std::chrono::steady_clock::now().time_since_epoch().count(); }

void start_watchdog(double seconds) {
  signal(SIGUSR2, print_stack);
  touch();
  std::thread([seconds] {
    for (;;) {
      std::this_thread::sleep_for(std::chrono::seconds(1));
      const auto idle =
          std::chrono::steady_clock::now().time_since_epoch() - std::chrono::steady_clock::duration(progress_at.load());
      if (std::chrono::duration<double>(idle).count() < seconds) continue;
      std::fprintf(stderr, "no progress for %.0f s: stacks of every thread\n", seconds);
      if (DIR* d = opendir("/proc/self/task")) {
        while (dirent* e = readdir(d)) {
          const long tid = std::atol(e->d_name);
          if (tid > 0 && tid != syscall(SYS_gettid)) {
            syscall(SYS_tgkill, getpid(), tid, SIGUSR2);
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
          }
        }
        closedir(d);
      }
      std::this_thread::sleep_for(std::chrono::seconds(1));
      std::_Exit(3);
    }
  }).detach();
}

}  // namespace troupe::test
