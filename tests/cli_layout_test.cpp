// Invalid layouts fail before any weight is read, with DESIGN.md's messages and exit code 2. The
// model directory here has a valid config.json and a weight file that is garbage: reaching the
// weights would give a different error.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <fstream>

#include "tests/test_support.hpp"

namespace troupe {
namespace {

using test::CliRun;
using test::troupe_cli;

std::filesystem::path config_only(const std::string& preset) {
  const auto dir = test::scratch_dir(preset);
  std::filesystem::copy_file(test::tiny_model(preset) / "config.json", dir / "config.json");
  std::ofstream(dir / "model.safetensors") << "not a safetensors file";
  return dir;
}

TEST(CliLayout, InvalidLayoutsExitWithTwoBeforeReadingWeights) {
  const auto dense = config_only("tiny-llama");
  const auto moe = config_only("tiny-qwen3-moe");
  struct Case {
    std::filesystem::path model;
    std::string flags, message;
  };
  const std::vector<Case> cases = {
      {dense, "--tensor-parallel-size 3", "Total number of attention heads (4) must be divisible by tensor parallel size (3)."},
      {dense, "--pipeline-parallel-size 5", "pipeline parallel size (5) exceeds the number of layers (2)"},
      {moe, "--tensor-parallel-size 2 --data-parallel-size 3 --enable-expert-parallel",
       "routed experts (8) must be divisible by the expert-parallel size (6)"},
      {moe, "--enable-expert-parallel", "--enable-expert-parallel has no effect: tensor × data parallel size is 1"},
      {dense, "--data-parallel-size 0", "--data-parallel-size must be at least 1, got 0"},
      {moe, "--data-parallel-size 2 --enable-expert-parallel --all2all-backend pplx",
       "--all2all-backend: expected all_to_all or allgather_reducescatter, got 'pplx'"},
  };
  for (const Case& c : cases) {
    const CliRun r = troupe_cli("generate --model " + c.model.string() + " --prompt-ids 1,2 " + c.flags);
    EXPECT_EQ(r.code, 2) << c.flags << "\n" << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << c.flags << "\n" << r.output;
    EXPECT_EQ(r.output.find("safetensors"), std::string::npos) << "weights were read: " << r.output;
  }
  // The same directory with a valid layout does reach the weights, and fails there.
  const CliRun ok_layout = troupe_cli("generate --model " + dense.string() + " --prompt-ids 1,2 --tensor-parallel-size 2");
  EXPECT_EQ(ok_layout.code, 1) << ok_layout.output;
  EXPECT_NE(ok_layout.output.find("model.safetensors"), std::string::npos) << ok_layout.output;
}

TEST(CliLayout, GenerateRunsThroughTheRuntimeWithParallelFlags) {
  const auto model = test::tiny_model("tiny-qwen3-moe").string();
  const CliRun one = troupe_cli("generate --quiet --model " + model + " --prompt-ids 5,6,7 --max-tokens 12 --temperature 0", false);
  const CliRun four = troupe_cli("generate --quiet --model " + model +
                              " --prompt-ids 5,6,7 --max-tokens 12 --temperature 0 --tensor-parallel-size 2 "
                              "--pipeline-parallel-size 2 --enable-expert-parallel",
                                 false);
  ASSERT_EQ(one.code, 0) << one.output;
  ASSERT_EQ(four.code, 0) << four.output;
  const std::string ids = one.output.substr(0, one.output.find('\n'));
  EXPECT_EQ(std::count(ids.begin(), ids.end(), ','), 11) << one.output;
  EXPECT_EQ(four.output.substr(0, four.output.find('\n')), ids);
}

TEST(CliLayout, PromptsFileBatchPrintsOneJsonLinePerPrompt) {
  const auto dir = test::scratch_dir();
  std::ofstream(dir / "prompts.jsonl") << "{\"prompt_ids\": [1, 2, 3]}\n\n{\"prompt_ids\": [4, 5], \"max_tokens\": 3}\n";
  const CliRun r = troupe_cli("generate --quiet --model " + test::tiny_model("tiny-llama").string() + " --prompts-file " +
                           (dir / "prompts.jsonl").string() + " --max-tokens 5 --temperature 0 --data-parallel-size 2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("{\"index\":0,\"finish_reason\":\"length\",\"token_ids\":["), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("{\"index\":1,\"finish_reason\":\"length\",\"token_ids\":["), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("2 requests, 5 prompt and 8 generated tokens"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace troupe
