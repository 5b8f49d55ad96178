#include "tests/test_support.hpp"

#include <sys/wait.h>

#include <array>
#include <cstdio>

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>

#include "tools/model_maker.hpp"

namespace troupe::test {

// The trees this program was built from; the environment may say otherwise (a test program copied
// to the GPU machine, where the source tree sits elsewhere and the build tree does not exist).
std::filesystem::path source_dir() {
  const char* env = std::getenv("TROUPE_SOURCE_DIR");
  return env ? env : TROUPE_SOURCE_DIR;
}
std::filesystem::path binary_dir() {
  const char* env = std::getenv("TROUPE_BINARY_DIR");
  return env ? env : TROUPE_BINARY_DIR;
}

std::filesystem::path scratch_dir(const std::string& tag) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "scratch";
  for (char& c : name)
    if (c == '/') c = '_';
  auto dir = binary_dir() / "test-scratch" / (name + (tag.empty() ? "" : "." + tag));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

std::filesystem::path tiny_model(const std::string& preset) {
  const auto dir = binary_dir() / "test-models" / preset;
  if (std::filesystem::exists(dir / "config.json")) return dir;
  const auto tmp = binary_dir() / "test-models" / (preset + ".tmp." + std::to_string(::getpid()));
  std::filesystem::remove_all(tmp);
  MakeModelOptions options;
  options.preset = preset;
  options.out = tmp;
  make_model(options);
  std::error_code ec;
  std::filesystem::rename(tmp, dir, ec);  // another process may have won the race: theirs is identical
  std::filesystem::remove_all(tmp);
  return dir;
}

CliRun troupe_cli(const std::string& args, bool with_stderr, int limit_s) {
  const std::string cmd = (limit_s > 0 ? "timeout " + std::to_string(limit_s) + " " : std::string()) +
                          (binary_dir() / "troupe").string() + " " + args + (with_stderr ? " 2>&1" : " 2>/dev/null");
  CliRun r;
  FILE* pipe = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe)) r.output.append(buf.data(), n);
  const int status = pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace troupe::test
