// The CPU reference against Hugging Face transformers: for a tiny model of each architecture (made
// by the model maker with seed 0, as tools/golden_fixtures.py saw it), the logits of every prompt
// position and the greedy continuation must equal the fixtures transformers wrote.
#include <gtest/gtest.h>
#include <simdjson.h>

#include <cmath>
#include <fstream>
#include <numeric>

#include "config/model_config.hpp"
#include "engine/cpu_backend.hpp"
#include "engine/model.hpp"
#include "engine/sequence_generator.hpp"
#include "tests/test_support.hpp"

namespace troupe {
namespace {

struct Fixture {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::vector<int32_t>> greedy;
  std::vector<float> logits;  // all prompts' positions, [positions, vocab]
  int vocab = 0;
};

std::vector<std::vector<int32_t>> id_lists(simdjson::dom::element e) {
  std::vector<std::vector<int32_t>> out;
  for (simdjson::dom::element list : e.get_array()) {
    out.emplace_back();
    for (simdjson::dom::element id : list.get_array()) out.back().push_back(static_cast<int32_t>(int64_t(id)));
  }
  return out;
}

Fixture load_fixture(const std::string& name) {
  const auto dir = test::source_dir() / "tests" / "fixtures" / "golden";
  simdjson::dom::parser parser;
  simdjson::dom::element doc = parser.load((dir / (name + ".json")).string());
  Fixture f;
  f.prompts = id_lists(doc["prompts"]);
  f.greedy = id_lists(doc["greedy"]);
  f.vocab = static_cast<int>(int64_t(doc["vocab_size"]));
  std::ifstream in(dir / std::string(std::string_view(doc["logits_file"])), std::ios::binary);
  in.seekg(0, std::ios::end);
  f.logits.resize(static_cast<size_t>(in.tellg()) / sizeof(float));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(f.logits.data()), static_cast<std::streamsize>(f.logits.size() * sizeof(float)));
  return f;
}

class Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Golden, LogitsAndGreedyContinuationMatchTransformers) {
  const std::string preset = GetParam();
  const Fixture fixture = load_fixture(preset);
  const auto dir = test::tiny_model(preset);
  auto backend = make_cpu_backend();
  Model model(load_model_config(dir), WeightFiles::open(dir), *backend);
  ASSERT_EQ(model.config().vocab_size, fixture.vocab);

  size_t row = 0;
  float worst = 0.0f;
  for (size_t p = 0; p < fixture.prompts.size(); ++p) {
    const auto& prompt = fixture.prompts[p];
    const int blocks = static_cast<int>(prompt.size() + 15) / 16;
    KvCache cache = model.allocate_kv_cache(blocks, 16);
    std::vector<int32_t> table(blocks);
    std::iota(table.begin(), table.end(), 0);
    StepBatch batch;
    batch.add_sequence(prompt, 0, table, Logits::all);
    std::vector<float> logits(prompt.size() * fixture.vocab);
    backend->download(model.forward(batch, cache), logits.data());
    for (size_t i = 0; i < logits.size(); ++i) {
      const float expected = fixture.logits[row * fixture.vocab + i];
      ASSERT_FALSE(std::isnan(logits[i]));
      worst = std::max(worst, std::fabs(logits[i] - expected));
    }
    row += prompt.size();

    SamplingParams greedy;
    greedy.temperature = 0;
    greedy.max_tokens = static_cast<int32_t>(fixture.greedy[p].size());
    Generation g = SequenceGenerator(model).generate(prompt, greedy);
    EXPECT_EQ(g.tokens, fixture.greedy[p]) << preset << ", prompt " << p;
  }
  ASSERT_EQ(row * fixture.vocab, fixture.logits.size());
  std::printf("%s: max |logit - transformers| = %.3g over %zu positions\n", preset.c_str(), worst, row);
  EXPECT_LE(worst, 1e-3f);
}

INSTANTIATE_TEST_SUITE_P(Architectures, Golden,
                         ::testing::Values("tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-mixtral", "tiny-qwen2-moe",
                                           "tiny-qwen3-moe"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

}  // namespace
}  // namespace troupe
