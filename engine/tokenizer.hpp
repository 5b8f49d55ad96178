// Text to token ids and back, reading `tokenizer.json` as people download it and producing exactly
// the ids of Hugging Face's tokenizers library: added tokens first, then normalizer, pre-tokenizer,
// BPE, and the post-processor's special tokens. Supported: BPE models with the byte-level
// pre-tokenizer and split regexes of GPT-2 / Qwen2 / Qwen3 / Llama 3, and the Metaspace / Prepend +
// byte-fallback style of Llama 2 and Mistral. Anything else in the file is a ConfigError at load
// time that names the feature.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace troupe {

class Tokenizer {
 public:
  // Reads tokenizer.json.
  static Tokenizer from_file(const std::filesystem::path& tokenizer_json);
  static Tokenizer from_json(std::string_view json_text);
  // Reads DIR/tokenizer.json, and DIR/tokenizer_config.json when present for the BOS and EOS
  // tokens (the names people configure; the post-processor alone decides what encode adds).
  static Tokenizer from_model_dir(const std::filesystem::path& dir);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // What HF's `encode(text, add_special_tokens)` returns as ids. `text` must be valid UTF-8
  // (std::invalid_argument otherwise). Thread-safe.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // What HF's `decode(ids, skip_special_tokens)` returns; ids outside the vocabulary are dropped.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  bool is_special(int32_t id) const;
  // One past the largest id (model vocabulary and added tokens).
  size_t vocab_size() const;
  // From tokenizer_config.json (from_model_dir), else empty.
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  const std::string& bos_token() const;
  const std::string& eos_token() const;

  // For streaming (IncrementalDetokenizer): decodes a window of ids that continues a stream, so
  // that the windows' texts concatenate to the decode of the whole stream. `tokens_before`: ids
  // that produced tokens came before the window; `text_before`: they produced text (decoders treat
  // the first token and the start of the text specially: Metaspace's prefix, Strip's leading space).
  // `*final` is set false when later ids could still change the window's text (an unfinished UTF-8
  // sequence, a run of byte-fallback tokens that may go on); the window is then to be decoded again
  // together with the ids that follow.
  std::string decode_window(std::span<const int32_t> ids, bool tokens_before, bool text_before, bool skip_special_tokens,
                            bool* final) const;
  // How many of `ids` decode skips or cannot find: what makes a window produce no token.
  size_t count_tokens(std::span<const int32_t> ids, bool skip_special_tokens) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace troupe
