#include <gtest/gtest.h>

#include "engine/stop_checker.hpp"

namespace troupe {
namespace {

// Feeds pieces one by one; returns everything released and whether it stopped.
std::pair<std::string, bool> feed(std::vector<std::string> stops, const std::vector<std::string>& pieces) {
  StopChecker c(std::move(stops));
  std::string out;
  for (const auto& p : pieces) out += c.push(p);
  out += c.finish();
  return {out, c.stopped()};
}

TEST(StopChecker, CutsAtTheFirstStopStringAcrossPieces) {
  EXPECT_EQ(feed({"END"}, {"hello E", "N", "D and more"}), std::make_pair(std::string("hello "), true));
  EXPECT_EQ(feed({"b", "abc"}, {"xxab", "c"}), std::make_pair(std::string("xxa"), true));
  EXPECT_EQ(feed({"\n\n"}, {"line\n", "\nnext"}), std::make_pair(std::string("line"), true));
}

TEST(StopChecker, ReleasesEverythingWhenNoStopMatches) {
  EXPECT_EQ(feed({"STOP"}, {"ST", "O", "P", "!"}), std::make_pair(std::string(""), true));
  EXPECT_EQ(feed({"STOP"}, {"ST", "O", "Q", "!"}), std::make_pair(std::string("STOQ!"), false));
  EXPECT_EQ(feed({}, {"a", "b"}), std::make_pair(std::string("ab"), false));
}

TEST(StopChecker, HoldsBackOnlyWhatCouldStartAStopString) {
  StopChecker c({"abc"});
  EXPECT_EQ(c.push("xyz"), "xyz");
  EXPECT_EQ(c.push("xya"), "xy");  // "a" may start "abc"
  EXPECT_EQ(c.push("b"), "");      // "ab" too
  EXPECT_EQ(c.push("q"), "abq");
  EXPECT_EQ(c.finish(), "");
}

TEST(StopChecker, NeverSplitsAUtf8Character) {
  StopChecker c({"\xA9z"});  // a stop string that begins inside a character
  const std::string out = c.push("a\xC3\xA9");  // "aé": keeping only \xA9 would split é
  EXPECT_EQ(out, "a");
  EXPECT_EQ(c.finish(), "\xC3\xA9");
}

}  // namespace
}  // namespace troupe
