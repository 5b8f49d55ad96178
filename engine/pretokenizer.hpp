// Pre-tokenizers of `tokenizer.json`: Split (with the split regexes of GPT-2, Qwen2/Qwen3 and Llama 3,
// each implemented directly over ICU character properties, not through a regex engine), ByteLevel and
// Metaspace, and Sequence of those. A pre-tokenizer cuts normalized text into the words BPE encodes.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace troupe {

// A word on its way to the model. `at_origin`: it starts at offset 0 of the caller's text, which is
// what Metaspace's "first" prepend scheme asks.
struct Piece {
  std::string text;
  bool at_origin = false;
};

// The split regexes we implement. Any other regex in a tokenizer.json is refused at load time.
enum class SplitPattern {
  gpt2,    // ByteLevel's built-in: 's|'t|...| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  qwen2,   // (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  llama3,  // as qwen2 but \p{N}{1,3}
};

// The pattern a regex string spells, or false.
bool recognize_split_pattern(std::string_view regex, SplitPattern* out);
// Byte ranges [begin, end) of the pattern's successive leftmost-first matches over `text`, as
// Oniguruma's find_iter reports them.
void find_matches(SplitPattern p, std::string_view text, std::vector<std::pair<size_t, size_t>>& out);

// What HF calls SplitDelimiterBehavior: where matched text goes.
enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

// The 256 characters GPT-2's byte-level alphabet uses for the bytes 0..255, as UTF-8.
const std::string& byte_level_char(unsigned char b);
// The byte a byte-level character stands for, or -1.
int byte_level_byte(char32_t c);

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` by their pre-tokenization; empty pieces are dropped.
  virtual void apply(std::vector<Piece>& pieces) const = 0;
};

// `pattern_literal` set means the Split pattern is a plain string (HF's {"String": ...}).
std::unique_ptr<PreTokenizer> make_split(SplitPattern pattern, SplitBehavior behavior, bool invert);
std::unique_ptr<PreTokenizer> make_literal_split(std::string literal, SplitBehavior behavior, bool invert);
std::unique_ptr<PreTokenizer> make_byte_level(bool add_prefix_space, bool use_regex);
enum class PrependScheme { always, first, never };
std::unique_ptr<PreTokenizer> make_metaspace(std::string replacement, PrependScheme scheme, bool split);
std::unique_ptr<PreTokenizer> make_sequence(std::vector<std::unique_ptr<PreTokenizer>> steps);

}  // namespace troupe
