// Decoders of `tokenizer.json`: token strings back to text. ByteLevel (GPT-2's byte alphabet),
// Replace of a literal, ByteFallback (<0xNN> runs), Fuse, Strip, Metaspace, and Sequence. Like HF's
// decode_chain, each step maps a list of token strings to a new list; the result is their
// concatenation.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/pretokenizer.hpp"

namespace troupe {

class TokenDecoder {
 public:
  virtual ~TokenDecoder() = default;
  virtual void apply(std::vector<std::string>& tokens) const = 0;
};

std::unique_ptr<TokenDecoder> make_byte_level_decoder();
std::unique_ptr<TokenDecoder> make_replace_decoder(std::string pattern, std::string content);
std::unique_ptr<TokenDecoder> make_byte_fallback_decoder();
std::unique_ptr<TokenDecoder> make_fuse_decoder();
std::unique_ptr<TokenDecoder> make_strip_decoder(std::string content, size_t start, size_t stop);
std::unique_ptr<TokenDecoder> make_metaspace_decoder(std::string replacement, PrependScheme scheme);
std::unique_ptr<TokenDecoder> make_decoder_sequence(std::vector<std::unique_ptr<TokenDecoder>> steps);

}  // namespace troupe
