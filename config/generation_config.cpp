#include "config/generation_config.hpp"

#include <simdjson.h>

#include <fstream>
#include <sstream>
#include <string>

#include "config/error.hpp"

namespace troupe {

GenerationConfig parse_generation_config(std::string_view json_text, std::string_view source) {
  simdjson::dom::parser parser;
  simdjson::padded_string padded(json_text);
  simdjson::dom::object root;
  if (parser.parse(padded).get_object().get(root) != simdjson::SUCCESS)
    throw ConfigError(std::string(source) + ": not a JSON object");
  auto fail = [&](const char* key) -> void {
    throw ConfigError(std::string(source) + ": field '" + key + "' has the wrong type");
  };
  GenerationConfig g;
  simdjson::dom::element e;
  if (root["eos_token_id"].get(e) == simdjson::SUCCESS && !e.is_null()) {
    int64_t id;
    simdjson::dom::array list;
    if (e.get_int64().get(id) == simdjson::SUCCESS) {
      g.eos_token_ids.push_back(static_cast<int>(id));
    } else if (e.get_array().get(list) == simdjson::SUCCESS) {
      for (simdjson::dom::element x : list) {
        if (x.get_int64().get(id) != simdjson::SUCCESS) fail("eos_token_id");
        g.eos_token_ids.push_back(static_cast<int>(id));
      }
    } else {
      fail("eos_token_id");
    }
  }
  auto number = [&](const char* key, std::optional<double>& out) {
    simdjson::dom::element v;
    if (root[key].get(v) != simdjson::SUCCESS || v.is_null()) return;
    double d;
    if (v.get_double().get(d) == simdjson::SUCCESS) {
      out = d;
      return;
    }
    int64_t i;
    if (v.get_int64().get(i) != simdjson::SUCCESS) fail(key);
    out = static_cast<double>(i);
  };
  number("temperature", g.temperature);
  number("top_p", g.top_p);
  number("min_p", g.min_p);
  number("repetition_penalty", g.repetition_penalty);
  std::optional<double> top_k;
  number("top_k", top_k);
  if (top_k) g.top_k = static_cast<int>(*top_k);
  return g;
}

GenerationConfig load_generation_config(const std::filesystem::path& model_dir) {
  const auto path = model_dir / "generation_config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_generation_config(ss.str(), path.string());
}

}  // namespace troupe
