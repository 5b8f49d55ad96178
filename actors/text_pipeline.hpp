// The text side of a request, shared by every request actor of a server: prompt text or chat
// messages to token ids (tokenizer, chat template), and token ids back to text.
#pragma once

#include <filesystem>
#include <optional>

#include "actors/client.hpp"
#include "engine/chat_template.hpp"
#include "engine/tokenizer.hpp"

namespace troupe {

class TextPipeline {
 public:
  // Reads DIR/tokenizer.json (+ tokenizer_config.json); the chat template of the config, or
  // `chat_template_file`, when there is one (chats are refused without).
  TextPipeline(const std::filesystem::path& model_dir, const std::optional<std::filesystem::path>& chat_template_file);

  // The prompt's ids as the model sees them. Throws RequestError (400, naming the parameter) for an
  // empty prompt, empty messages, or a template that fails on these messages.
  std::vector<int32_t> prompt_tokens(const GenerateRequest& request, bool add_special_tokens = true) const;
  std::string token_text(int32_t id) const;
  const Tokenizer& tokenizer() const { return tokenizer_; }
  bool has_chat_template() const { return chat_template_.has_value(); }

 private:
  Tokenizer tokenizer_;
  std::optional<ChatTemplate> chat_template_;
};

}  // namespace troupe
