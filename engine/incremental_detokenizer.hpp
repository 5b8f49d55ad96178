// Streaming decode for one generated sequence: ids go in one at a time, text comes out as soon as it
// is final. Chunks are always whole UTF-8 characters, and the chunks of a stream, finish()
// included, concatenate to exactly Tokenizer::decode of all its ids.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/tokenizer.hpp"

namespace troupe {

class IncrementalDetokenizer {
 public:
  // `tokenizer` must outlive this object.
  explicit IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens = false);

  // The text that `id` completes; empty while a character (or a run of byte tokens) is unfinished.
  std::string push(int32_t id);
  // Whatever is still held back, decoded as the full decode would (an unfinished character
  // becomes U+FFFD there too).
  std::string finish();

 private:
  std::string decode_window(bool* final);

  const Tokenizer* tokenizer_;
  bool skip_special_;
  // Ids since the last point where the text was final; decoding restarts from there, so each push
  // costs the window, not the stream.
  std::vector<int32_t> window_;
  bool tokens_before_ = false;
  bool text_before_ = false;
};

}  // namespace troupe
