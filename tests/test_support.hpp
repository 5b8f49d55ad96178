// Shared helpers for tests: paths of the source and build trees, and scratch directories.
#pragma once

#include <filesystem>
#include <string>

namespace troupe::test {

std::filesystem::path source_dir();
std::filesystem::path binary_dir();
// A fresh empty directory under the build tree's test scratch area, named after the current test.
std::filesystem::path scratch_dir(const std::string& tag = "");

}  // namespace troupe::test
