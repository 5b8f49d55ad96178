// A `troupe serve` (or any server that prints `listening on http://HOST:PORT` on stdout when ready)
// run as a child process by `troupe sweep`: stdout on a pipe for the ready line, stderr appended to
// a log file whose tail explains a failed start; stopped with SIGTERM, then SIGKILL after a grace
// period. The child gets SIGTERM if the parent dies, so an interrupted sweep leaves no server behind.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace troupe {

class ServerProcess {
 public:
  // Starts `binary args...` (argv[0] is the binary's path). Throws std::runtime_error when it cannot
  // fork or open the log.
  ServerProcess(const std::filesystem::path& binary, const std::vector<std::string>& args,
                const std::filesystem::path& log_file);
  ~ServerProcess();  // stops a running child (SIGKILL at once)
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  struct Ready {
    bool ok = false;
    std::string host;
    int port = 0;
    std::string error;  // why not: exited with code N, killed by signal N, no ready line within T s
  };
  // Waits for the ready line on stdout, or the child's end, or the timeout (then the child is left
  // running: stop() it).
  Ready wait_ready(std::chrono::milliseconds timeout);

  bool running();  // false once the child has ended (its status is then kept)
  // SIGTERM, then SIGKILL if it has not ended within `grace`. Returns the exit code, 128 + signal
  // when killed by a signal, or the earlier exit status when it had already ended.
  int stop(std::chrono::milliseconds grace);
  std::optional<int> exit_code() const { return exit_code_; }  // once ended
  pid_t pid() const { return pid_; }

  // The last `lines` lines of the log file.
  std::string log_tail(size_t lines) const;

 private:
  bool reap(bool block);
  pid_t pid_ = -1;
  int out_ = -1;
  std::string printed_;
  std::filesystem::path log_;
  std::optional<int> exit_code_;
};

// "exit code 2" / "killed by signal 9" for a code stop() or exit_code() returned.
std::string describe_exit(int code);

}  // namespace troupe
