// The model's `generation_config.json`: its stop tokens and the sampling defaults its authors chose
// (vLLM applies them to requests that leave a parameter unset; so do we).
#pragma once

#include <filesystem>
#include <optional>
#include <string_view>
#include <vector>

namespace troupe {

struct GenerationConfig {
  std::vector<int> eos_token_ids;
  std::optional<double> temperature;
  std::optional<double> top_p;
  std::optional<int> top_k;
  std::optional<double> min_p;
  std::optional<double> repetition_penalty;
};

GenerationConfig parse_generation_config(std::string_view json_text, std::string_view source);
// An absent file gives an empty config; a malformed one is a ConfigError naming it.
GenerationConfig load_generation_config(const std::filesystem::path& model_dir);

}  // namespace troupe
