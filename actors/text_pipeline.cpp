#include "actors/text_pipeline.hpp"

#include "config/error.hpp"

namespace troupe {

TextPipeline::TextPipeline(const std::filesystem::path& model_dir,
                           const std::optional<std::filesystem::path>& chat_template_file)
    : tokenizer_(Tokenizer::from_model_dir(model_dir)) {
  try {
    chat_template_.emplace(ChatTemplate::from_model_dir(model_dir, chat_template_file));
  } catch (const ConfigError&) {
    if (chat_template_file) throw;  // asked for one explicitly: its problem is the user's to see
  }
}

std::vector<int32_t> TextPipeline::prompt_tokens(const GenerateRequest& r, bool add_special_tokens) const {
  if (r.prompt_ids) {
    if (r.prompt_ids->empty()) throw RequestError(400, "The prompt is empty.", "prompt");
    return *r.prompt_ids;
  }
  if (r.prompt_text) {
    std::vector<int32_t> ids = tokenizer_.encode(*r.prompt_text, add_special_tokens);
    if (ids.empty()) throw RequestError(400, "The prompt is empty.", "prompt");
    return ids;
  }
  if (!r.messages_json) throw RequestError(400, "Either a prompt or messages are required.", "prompt");
  if (!chat_template_)
    throw RequestError(400,
                       "As of transformers v4.44, default chat template is no longer allowed, so you must provide a "
                       "chat template if the tokenizer does not define one.",
                       "messages");
  std::string text;
  try {
    text = chat_template_->render_json(*r.messages_json, r.tools_json, r.add_generation_prompt,
                                       r.chat_template_kwargs_json);
  } catch (const std::exception& e) {
    throw RequestError(400, std::string("The chat template failed on these messages: ") + e.what(), "messages");
  }
  // As transformers' apply_chat_template(tokenize=True): the template writes its special tokens.
  std::vector<int32_t> ids = tokenizer_.encode(text, false);
  if (ids.empty()) throw RequestError(400, "The messages render to an empty prompt.", "messages");
  return ids;
}

std::string TextPipeline::token_text(int32_t id) const {
  const int32_t one[] = {id};
  return tokenizer_.decode(one, false);
}

}  // namespace troupe
