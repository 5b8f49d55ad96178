#include "tests/test_support.hpp"

#include <gtest/gtest.h>

namespace troupe::test {

std::filesystem::path source_dir() { return TROUPE_SOURCE_DIR; }
std::filesystem::path binary_dir() { return TROUPE_BINARY_DIR; }

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

}  // namespace troupe::test
