#include "engine/chat_template.hpp"

#include <fstream>
#include <sstream>

#include "config/error.hpp"
#include "engine/jinja_eval.hpp"
#include "engine/jinja_lexer.hpp"
#include "engine/jinja_parser.hpp"

namespace troupe {

struct ChatTemplate::Impl {
  jinja::Body body;
  std::vector<std::pair<std::string, jinja::Value>> special_tokens;
};

ChatTemplate::ChatTemplate(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;
ChatTemplate::~ChatTemplate() = default;

namespace {

std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw ConfigError("cannot read " + p.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A special token in tokenizer_config.json: a string, or {"content": ...} in older files.
jinja::Value token_text(const jinja::Value& v) {
  if (v.is_string()) return v;
  if (v.is_mapping()) {
    if (jinja::Value* c = v.find("content"); c && c->is_string()) return *c;
  }
  return jinja::Value();
}

}  // namespace

ChatTemplate ChatTemplate::from_string(std::string_view source, std::vector<std::pair<std::string, jinja::Value>> special_tokens) {
  auto impl = std::make_unique<Impl>();
  impl->body = jinja::parse(jinja::lex(source));
  impl->special_tokens = std::move(special_tokens);
  return ChatTemplate(std::move(impl));
}

ChatTemplate ChatTemplate::from_model_dir(const std::filesystem::path& dir, const std::optional<std::filesystem::path>& template_file) {
  const std::filesystem::path cfg_path = dir / "tokenizer_config.json";
  jinja::Value cfg = jinja::Value::dict();
  if (std::filesystem::exists(cfg_path)) {
    try {
      cfg = jinja::Value::from_json(read_text(cfg_path));
    } catch (const jinja::TemplateError& e) {
      throw ConfigError(cfg_path.string() + ": " + e.what());
    }
    if (!cfg.is_mapping()) throw ConfigError(cfg_path.string() + ": not a JSON object");
  } else if (!template_file) {
    throw ConfigError(dir.string() + " has no tokenizer_config.json (give a template with --chat-template)");
  }
  std::vector<std::pair<std::string, jinja::Value>> specials;
  for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
    if (jinja::Value* v = cfg.find(key)) {
      jinja::Value t = token_text(*v);
      if (!t.is_undefined()) specials.emplace_back(key, t);
    }
  }
  if (jinja::Value* v = cfg.find("additional_special_tokens"); v && v->is_sequence()) {
    jinja::List names;
    for (const jinja::Value& x : v->items()) {
      jinja::Value t = token_text(x);
      if (!t.is_undefined()) names.push_back(t);
    }
    specials.emplace_back("additional_special_tokens", jinja::Value::list(std::move(names)));
  }

  std::string source;
  std::string where;
  if (template_file) {
    source = read_text(*template_file);
    where = template_file->string();
  } else {
    where = cfg_path.string();
    jinja::Value* t = cfg.find("chat_template");
    if (t && t->is_string()) {
      source = t->str();
    } else if (t && t->is_sequence()) {
      for (const jinja::Value& named : t->items()) {
        jinja::Value* name = named.is_mapping() ? named.find("name") : nullptr;
        jinja::Value* text = named.is_mapping() ? named.find("template") : nullptr;
        if (name && text && name->is_string() && name->str() == "default" && text->is_string()) source = text->str();
      }
      if (source.empty()) throw ConfigError(where + ": chat_template has no template named \"default\"");
    } else {
      throw ConfigError(where + " has no chat_template (give one with --chat-template)");
    }
  }
  try {
    return from_string(source, std::move(specials));
  } catch (const TemplateError& e) {
    throw TemplateError(where + ": " + e.what());
  }
}

std::string ChatTemplate::render(const jinja::Value& messages, const jinja::Value& tools, bool add_generation_prompt,
                                 const std::vector<std::pair<std::string, jinja::Value>>& extra) const {
  // The variables transformers passes: messages, tools, documents, add_generation_prompt, the
  // special tokens, then the caller's keyword arguments, later ones winning.
  std::vector<std::pair<std::string, jinja::Value>> vars;
  vars.emplace_back("messages", messages);
  vars.emplace_back("tools", tools);
  vars.emplace_back("documents", jinja::Value::none());
  vars.emplace_back("add_generation_prompt", jinja::Value(add_generation_prompt));
  for (const auto& kv : impl_->special_tokens) vars.push_back(kv);
  for (const auto& kv : extra) vars.push_back(kv);
  return jinja::render(impl_->body, vars);
}

std::string ChatTemplate::render_json(std::string_view messages_json, std::string_view tools_json, bool add_generation_prompt,
                                      std::string_view extra_json) const {
  jinja::Value messages = jinja::Value::from_json(messages_json);
  jinja::Value tools = tools_json.empty() ? jinja::Value::none() : jinja::Value::from_json(tools_json);
  std::vector<std::pair<std::string, jinja::Value>> extra;
  if (!extra_json.empty()) {
    jinja::Value e = jinja::Value::from_json(extra_json);
    if (!e.is_mapping()) throw TemplateError("chat template variables must be a JSON object");
    for (const auto& [k, v] : e.dict_ref().entries) extra.emplace_back(k.str(), v);
  }
  return render(messages, tools, add_generation_prompt, extra);
}

}  // namespace troupe
