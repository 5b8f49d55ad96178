// Shared helpers for tests: paths of the source and build trees, scratch directories, and the tiny
// model-maker models most tests run.
#pragma once

#include <filesystem>
#include <string>

namespace troupe::test {

std::filesystem::path source_dir();
std::filesystem::path binary_dir();
// A fresh empty directory under the build tree's test scratch area, named after the current test.
std::filesystem::path scratch_dir(const std::string& tag = "");

// The model maker's `preset` with seed 0, written once per build tree and shared by tests (written to
// a temporary folder and renamed, so test programs running in parallel never see half a model).
std::filesystem::path tiny_model(const std::string& preset);

// `troupe ARGS` of this build tree run through the shell: its exit code and output (stderr too, unless
// with_stderr is false). limit_s > 0 kills it after that many seconds (a hang reads exit code 124).
struct CliRun {
  int code = -1;
  std::string output;
};
CliRun troupe_cli(const std::string& args, bool with_stderr = true, int limit_s = 0);

}  // namespace troupe::test
