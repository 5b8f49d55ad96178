#include "tools/server_process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <regex>
#include <stdexcept>
#include <thread>

namespace troupe {

using Clock = std::chrono::steady_clock;

ServerProcess::ServerProcess(const std::filesystem::path& binary, const std::vector<std::string>& args,
                             const std::filesystem::path& log_file)
    : log_(log_file) {
  // Everything the child needs is made before fork: after it, only async-signal-safe calls.
  std::vector<std::string> all{binary.string()};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  const int err = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (err < 0) throw std::runtime_error("cannot open " + log_file.string() + ": " + std::strerror(errno));
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    ::close(err);
    throw std::runtime_error(std::string("pipe failed: ") + std::strerror(errno));
  }
  const pid_t parent = ::getpid();
  pid_ = ::fork();
  if (pid_ == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(127);  // the parent died before prctl
    ::dup2(fds[1], 1);
    ::dup2(err, 2);
    const int in = ::open("/dev/null", O_RDONLY);
    if (in >= 0) ::dup2(in, 0);
    ::execv(argv[0], argv.data());
    const char msg[] = "troupe: exec of the server failed\n";
    (void)!::write(2, msg, sizeof msg - 1);
    ::_exit(127);
  }
  ::close(fds[1]);
  ::close(err);
  if (pid_ < 0) {
    ::close(fds[0]);
    throw std::runtime_error(std::string("fork failed: ") + std::strerror(errno));
  }
  out_ = fds[0];
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0 && !exit_code_) {
    ::kill(pid_, SIGKILL);
    reap(true);
  }
  if (out_ >= 0) ::close(out_);
}

bool ServerProcess::reap(bool block) {
  if (exit_code_) return true;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r != pid_) return false;
  exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 1;
  return true;
}

bool ServerProcess::running() { return !reap(false); }

ServerProcess::Ready ServerProcess::wait_ready(std::chrono::milliseconds timeout) {
  static const std::regex ready(R"(listening on http://(\[[^\]]+\]|[^\s:/]+):(\d+))");
  const auto deadline = Clock::now() + timeout;
  Ready r;
  bool open = out_ >= 0;
  while (Clock::now() < deadline) {
    if (open) {
      pollfd p{out_, POLLIN, 0};
      if (::poll(&p, 1, 50) > 0) {
        char buf[4096];
        const ssize_t n = ::read(out_, buf, sizeof buf);
        if (n > 0) {
          printed_.append(buf, static_cast<size_t>(n));
          std::smatch m;
          if (std::regex_search(printed_, m, ready)) {
            r.ok = true;
            r.host = m[1];
            if (r.host.size() > 2 && r.host.front() == '[') r.host = r.host.substr(1, r.host.size() - 2);
            r.port = std::stoi(m[2]);
            return r;
          }
        } else if (n == 0) {
          open = false;  // stdout closed: the process is ending
        }
      }
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (reap(false)) {
      r.error = "the server ended before it was ready (" + describe_exit(*exit_code_) + ")";
      return r;
    }
  }
  r.error = "no ready line within " + std::to_string(timeout.count() / 1000) + " s";
  return r;
}

int ServerProcess::stop(std::chrono::milliseconds grace) {
  if (!reap(false)) {
    ::kill(pid_, SIGTERM);
    const auto deadline = Clock::now() + grace;
    while (!reap(false) && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (!exit_code_) {
      ::kill(pid_, SIGKILL);
      reap(true);
    }
  }
  return *exit_code_;
}

std::string ServerProcess::log_tail(size_t lines) const {
  std::ifstream in(log_);
  std::deque<std::string> last;
  std::string line;
  while (std::getline(in, line)) {
    last.push_back(line);
    if (last.size() > lines) last.pop_front();
  }
  std::string out;
  for (const std::string& l : last) out += l + "\n";
  return out;
}

std::string describe_exit(int code) {
  if (code > 128) return "killed by signal " + std::to_string(code - 128) + " (" + strsignal(code - 128) + ")";
  return "exit code " + std::to_string(code);
}

}  // namespace troupe
