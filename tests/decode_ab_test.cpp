// tools/decode_ab.py, the alternating runner of `troupe bench decode` that the GPU figures of
// docs/benchmarks.md come from: its order of runs, the environment each variant gets, its table and
// ratios (against a stand-in troupe whose step time is set by the environment), and its reading of
// the real bench's output on the CPU backend.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

#include "tests/test_support.hpp"

namespace troupe {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using test::binary_dir;
using test::scratch_dir;
using test::source_dir;

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  return {std::istreambuf_iterator<char>(in), {}};
}

// `python3 tools/decode_ab.py ARGS`: exit code, stdout and stderr in files of `dir`.
int run_tool(const fs::path& dir, const std::string& args) {
  const std::string cmd = "python3 " + (source_dir() / "tools" / "decode_ab.py").string() + " " + args + " > " +
                          (dir / "out.txt").string() + " 2> " + (dir / "err.txt").string();
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A stand-in for troupe: one result row whose step is $FAKE_MS divided by the tensor-parallel size,
// plus 0.02 for each earlier call (a counter file), so that the order of the runs shows in the times.
fs::path fake_troupe(const fs::path& dir) {
  const fs::path script = dir / "fake_troupe.sh";
  std::ofstream(script) << "#!/bin/sh\n"
                           "tp=1; prev=''; for a in \"$@\"; do [ \"$prev\" = --tensor-parallel-size ] && tp=$a; prev=$a; done\n"
                           "n=$(cat " << (dir / "calls").string() << " 2>/dev/null || echo 0); echo $((n + 1)) > "
                        << (dir / "calls").string() << "\n"
                           "echo 'ceilings: none'\n"
                           "echo ' batch    ms/step     tokens/s      GB/rank'\n"
                           "awk -v ms=\"$FAKE_MS\" -v tp=$tp -v n=$n 'BEGIN { printf \"     1      %.3f          100        0.000\\n\", "
                           "ms / tp + 0.02 * n }'\n";
  fs::permissions(script, fs::perms::owner_all);
  return script;
}

TEST(DecodeAb, AlternatesVariantsAndDividesEachSizeByTp1OfTheSameRepetition) {
  const fs::path dir = scratch_dir();
  const fs::path fake = fake_troupe(dir);
  ASSERT_EQ(run_tool(dir, "--troupe " + fake.string() + " --model m --tp 1,2 --reps 2 --variant a:FAKE_MS=4 " +
                              "--variant b:FAKE_MS=6,OTHER=x --json " + (dir / "runs.json").string() + " -- --batch 1"),
            0)
      << read_text(dir / "err.txt");
  const json::array runs = json::parse(read_text(dir / "runs.json")).at("runs").as_array();
  ASSERT_EQ(runs.size(), 8u);
  // Repetition by repetition, each variant at each size: a tp1, a tp2, b tp1, b tp2, then again.
  const char* order[] = {"a", "a", "b", "b", "a", "a", "b", "b"};
  for (size_t i = 0; i < runs.size(); ++i) {
    const json::object& r = runs[i].as_object();
    EXPECT_EQ(r.at("variant").as_string(), order[i]) << i;
    EXPECT_EQ(r.at("tp").to_number<int>(), i % 2 == 0 ? 1 : 2) << i;
    EXPECT_EQ(r.at("rep").to_number<int>(), i < 4 ? 0 : 1) << i;
    const double ms = (order[i][0] == 'a' ? 4.0 : 6.0) / (i % 2 == 0 ? 1 : 2) + 0.02 * static_cast<double>(i);
    EXPECT_NEAR(r.at("ms").to_number<double>(), ms, 1e-9) << i;
  }
  EXPECT_EQ(runs[2].at("env").at("OTHER").as_string(), "x");
  const std::string table = read_text(dir / "out.txt");
  EXPECT_NE(table.find("| variant | tp1 ms | tp2 ms | tp2 ÷ tp1 |"), std::string::npos) << table;
  // a: tp1 4.000 then 4.080, tp2 2.020 then 2.100; ratios 2.020 / 4.000 and 2.100 / 4.080.
  EXPECT_NE(table.find("| a | 4.000 / 4.080 | 2.020 / 2.100 | 0.505 / 0.515 |"), std::string::npos) << table;
  EXPECT_NE(table.find("| b | 6.040 / 6.120 | 3.060 / 3.140 | 0.507 / 0.513 |"), std::string::npos) << table;
}

TEST(DecodeAb, ReadsTheRealBenchOnTheCpu) {
  const fs::path dir = scratch_dir();
  const std::string model = test::tiny_model("tiny-llama").string();
  ASSERT_EQ(run_tool(dir, "--troupe " + (binary_dir() / "troupe").string() + " --model " + model +
                              " --reps 1 --variant base --json " + (dir / "runs.json").string() +
                              " -- --device cpu --batch 1 --context 8 --steps 2"),
            0)
      << read_text(dir / "err.txt");
  const json::array runs = json::parse(read_text(dir / "runs.json")).at("runs").as_array();
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_GT(runs[0].at("ms").to_number<double>(), 0.0);
}

TEST(DecodeAb, AFailedRunIsReportedAndFailsTheCall) {
  const fs::path dir = scratch_dir();
  const std::string model = test::tiny_model("tiny-llama").string();
  // Two tensor-parallel ranks need two CUDA devices; the CPU-only bench refuses.
  EXPECT_EQ(run_tool(dir, "--troupe " + (binary_dir() / "troupe").string() + " --model " + model +
                              " --tp 1,2 --reps 1 --variant base -- --device cpu --batch 1 --context 8 --steps 2"),
            1);
  EXPECT_NE(read_text(dir / "err.txt").find("base tp2: failed"), std::string::npos) << read_text(dir / "err.txt");
  EXPECT_NE(read_text(dir / "out.txt").find("| base |"), std::string::npos);
}

TEST(DecodeAb, ABadVariantIsAUsageErrorNamingTheFlag) {
  const fs::path dir = scratch_dir();
  EXPECT_EQ(run_tool(dir, "--troupe t --model m --variant a:NOEQUALS"), 2);
  EXPECT_NE(read_text(dir / "err.txt").find("--variant"), std::string::npos) << read_text(dir / "err.txt");
  EXPECT_EQ(run_tool(dir, "--troupe t --model m --variant a --tp one"), 2);
  EXPECT_NE(read_text(dir / "err.txt").find("--tp"), std::string::npos) << read_text(dir / "err.txt");
}

}  // namespace
}  // namespace troupe
