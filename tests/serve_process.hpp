// Runs `troupe serve` as a child process for tests: stdout on a pipe (its ready line gives the
// port), stderr in a log file; killed when the object goes.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>
#include <vector>

#include "tests/test_support.hpp"

namespace troupe::test {

// Starts `troupe serve` with stdout on a pipe; the ready line gives the port.
struct ServeProcess {
  pid_t pid = -1;
  int out = -1;
  std::string printed;
  std::filesystem::path log;

  explicit ServeProcess(const std::vector<std::string>& args, std::filesystem::path log_file) : log(std::move(log_file)) {
    int fds[2];
    if (pipe(fds) != 0) throw std::runtime_error("pipe failed");
    pid = fork();
    if (pid == 0) {
      dup2(fds[1], 1);
      const int err = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(err, 2);
      close(fds[0]);
      std::vector<std::string> all{"troupe", "serve"};
      all.insert(all.end(), args.begin(), args.end());
      std::vector<char*> argv;
      for (auto& a : all) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv((binary_dir() / "troupe").c_str(), argv.data());
      _exit(127);
    }
    close(fds[1]);
    out = fds[0];
  }
  ~ServeProcess() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    if (out >= 0) close(out);
  }
  // The port of the ready line, or 0 when the process ended (or stayed silent) first.
  int wait_ready(int timeout_ms) {
    const std::regex ready(R"(listening on http://127\.0\.0\.1:(\d+)\n)");
    for (int waited = 0; waited < timeout_ms; waited += 100) {
      pollfd p{out, POLLIN, 0};
      if (poll(&p, 1, 100) > 0) {
        char buf[1024];
        const ssize_t n = read(out, buf, sizeof buf);
        if (n <= 0) return 0;
        printed.append(buf, static_cast<size_t>(n));
        std::smatch m;
        if (std::regex_search(printed, m, ready)) return std::stoi(m[1]);
      }
    }
    return 0;
  }
  int stop(int signal) {
    kill(pid, signal);
    int status = 0;
    waitpid(pid, &status, 0);
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  std::string errors() const {
    std::ifstream in(log);
    return {std::istreambuf_iterator<char>(in), {}};
  }
};

}  // namespace troupe::test
