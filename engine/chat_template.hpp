// A model's chat template: messages (and tools) to the prompt text, rendered exactly as transformers'
// apply_chat_template renders it with Jinja2 (same environment: trim_blocks, lstrip_blocks,
// loopcontrols, tojson without ASCII escaping, raise_exception, strftime_now; special tokens from
// tokenizer_config.json as variables). The template is parsed once at load time, where an
// unsupported construct is an error naming it and its line.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/jinja_value.hpp"

namespace troupe {

using TemplateError = jinja::TemplateError;

class ChatTemplate {
 public:
  // The template of DIR/tokenizer_config.json ("chat_template": a string, or a list of named
  // templates of which "default" is used), or the file `template_file` when given; special tokens
  // (bos_token, eos_token, unk_token, pad_token, additional_special_tokens) from the config.
  // Throws ConfigError when there is no template or no readable config, TemplateError when the
  // template uses something unsupported.
  static ChatTemplate from_model_dir(const std::filesystem::path& dir, const std::optional<std::filesystem::path>& template_file = {});
  // A template from text, with the special-token variables to render it with.
  static ChatTemplate from_string(std::string_view source, std::vector<std::pair<std::string, jinja::Value>> special_tokens = {});

  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;
  ~ChatTemplate();

  // `messages`: a list of {role, content, and optionally tool_calls, tool_call_id, name,
  // reasoning_content...}; `tools`: a list of tool schemas or none; `extra`: further variables
  // (enable_thinking, date_string, ...) that override the defaults. Thread-safe.
  std::string render(const jinja::Value& messages, const jinja::Value& tools = jinja::Value::none(), bool add_generation_prompt = false,
                     const std::vector<std::pair<std::string, jinja::Value>>& extra = {}) const;
  // The same from JSON text, as the server receives it: `messages_json` a JSON list, `tools_json` a
  // JSON list or empty for none, `extra_json` a JSON object of variables or empty.
  std::string render_json(std::string_view messages_json, std::string_view tools_json = {}, bool add_generation_prompt = false,
                          std::string_view extra_json = {}) const;

 private:
  struct Impl;
  explicit ChatTemplate(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace troupe
