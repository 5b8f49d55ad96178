// Reading `tokenizer.json`: each component (model, normalizer, pre-tokenizer, decoder,
// post-processor, added tokens) checked for support and built. A feature we do not implement is a
// ConfigError here, at load time, naming it.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "engine/added_tokens.hpp"
#include "engine/bpe.hpp"
#include "engine/normalizer.hpp"
#include "engine/pretokenizer.hpp"
#include "engine/token_decoder.hpp"

namespace troupe {

// What the decoder chain tells the streaming decoder.
struct DecoderTraits {
  bool byte_level = false;     // bytes reassembled across tokens: a window may end mid-character
  bool byte_fallback = false;  // <0xNN> runs are resolved as a whole
};

// The ids a post-processor puts around a single sequence: `before`, the text's ids, `after`.
struct PostTemplate {
  std::vector<int32_t> before, after;
};

struct TokenizerSpec {
  std::unique_ptr<Bpe> model;
  std::unique_ptr<Normalizer> normalizer;      // null: none
  std::unique_ptr<PreTokenizer> pre_tokenizer;  // null: none
  std::unique_ptr<TokenDecoder> decoder;        // null: tokens joined with spaces
  DecoderTraits traits;
  PostTemplate post;
  std::vector<AddedToken> added;  // in file order
};

TokenizerSpec parse_tokenizer_json(std::string_view json_text);

}  // namespace troupe
