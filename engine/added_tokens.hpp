// Added and special tokens of `tokenizer.json`: found in the text before anything else, so that
// "<|im_start|>" is one id rather than BPE pieces. Matching is leftmost-longest, and honours each
// token's lstrip / rstrip / single_word flags as Hugging Face's AddedVocabulary does.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace troupe {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;  // matched in normalized text (against the normalized content)
};

// A stretch of text: either an added token (id >= 0) or plain text (id < 0) still to be tokenized.
struct Segment {
  size_t begin = 0, end = 0;
  int32_t id = -1;
};

// One set of patterns (HF keeps two: tokens matched in the raw text and tokens matched after the
// normalizer ran) and the matcher over it.
class AddedTokenMatcher {
 public:
  // `patterns[i]` is what token `tokens[i]` looks like in the text it is matched in.
  AddedTokenMatcher(std::vector<AddedToken> tokens, std::vector<std::string> patterns);
  bool empty() const { return tokens_.empty(); }
  // Cuts `text` into segments covering it (an empty text gives no segment).
  void split(std::string_view text, std::vector<Segment>& out) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> next;  // sorted by byte
    int32_t token = -1;                                    // index into tokens_ when a pattern ends here
  };
  int32_t child(int32_t node, unsigned char b) const;
  // Longest pattern starting at `pos`: token index and length, or -1.
  std::pair<int32_t, size_t> longest_at(std::string_view text, size_t pos) const;

  std::vector<AddedToken> tokens_;
  std::vector<Node> trie_;
  std::array<bool, 256> first_byte_{};
};

}  // namespace troupe
