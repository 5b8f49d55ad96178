// `troupe generate`: one prompt through a model, the continuation printed as it is sampled.
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>

#include "config/error.hpp"
#include "config/generation_config.hpp"
#include "config/model_config.hpp"
#include "engine/cpu_backend.hpp"
#include "engine/incremental_detokenizer.hpp"
#include "engine/model.hpp"
#include "engine/sequence_generator.hpp"
#include "engine/tokenizer.hpp"
#include "tools/commands.hpp"
#ifdef TROUPE_HAVE_CUDA
#include "kernels/cuda_backend.hpp"
#endif

namespace troupe {
namespace {

namespace po = boost::program_options;

std::vector<int32_t> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    long v = -1;
    try {
      v = std::stol(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || v < 0 || v > INT32_MAX)
      throw ConfigError("--prompt-ids: expected comma-separated non-negative token ids, got '" + item + "'");
    ids.push_back(static_cast<int32_t>(v));
  }
  if (ids.empty()) throw ConfigError("--prompt-ids: no ids given");
  return ids;
}

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cpu") return make_cpu_backend();
#ifdef TROUPE_HAVE_CUDA
  if (device == "cuda") {
    if (cuda_device_count() == 0) throw ConfigError("--device cuda: no CUDA device is visible");
    return make_cuda_backend(0);
  }
#endif
  throw ConfigError("--device: expected cpu" +
#ifdef TROUPE_HAVE_CUDA
                    std::string(" or cuda") +
#else
                    std::string(" (this build has no CUDA backend)") +
#endif
                    ", got '" + device + "'");
}

void show_progress(uint64_t done, uint64_t total) {
  static int last = -1;
  const int percent = total ? static_cast<int>(100 * done / total) : 100;
  if (percent == last) return;
  last = percent;
  std::fprintf(stderr, "\rloading weights: %3d%% (%.2f / %.2f GB)", percent, done / 1e9, total / 1e9);
  if (done >= total) std::fprintf(stderr, "\n");
}

}  // namespace

int generate_command(int argc, char** argv) {
  po::options_description flags("troupe generate: run a prompt through a model and print the continuation");
  std::string model_dir, prompt_ids, prompt, device = "cpu";
  SamplingParams params;
  int max_tokens = 16;
  std::optional<double> temperature, top_p, min_p, repetition_penalty;
  std::optional<int> top_k;
  std::optional<int64_t> seed;
  bool output_ids = false;
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("model", po::value(&model_dir)->required(), "Hugging Face model directory")
      ("prompt-ids", po::value(&prompt_ids), "prompt as comma-separated token ids")
      ("prompt", po::value(&prompt), "prompt text (needs the model's tokenizer.json)")
      ("max-tokens", po::value(&max_tokens), "tokens to generate at most (default 16)")
      ("temperature", po::value<double>()->notifier([&](double v) { temperature = v; }),
       "sampling temperature; 0 is greedy (default: the model's generation_config.json, else 1)")
      ("top-p", po::value<double>()->notifier([&](double v) { top_p = v; }), "nucleus sampling mass in (0, 1]")
      ("top-k", po::value<int>()->notifier([&](int v) { top_k = v; }), "keep the k most likely tokens (0: off)")
      ("min-p", po::value<double>()->notifier([&](double v) { min_p = v; }), "drop tokens below min-p × the top probability")
      ("seed", po::value<int64_t>()->notifier([&](int64_t v) { seed = v; }), "random seed: same seed, same output")
      ("repetition-penalty", po::value<double>()->notifier([&](double v) { repetition_penalty = v; }), "penalty on tokens seen (1: off)")
      ("presence-penalty", po::value(&params.presence_penalty), "penalty on tokens generated at least once")
      ("frequency-penalty", po::value(&params.frequency_penalty), "penalty per time a token was generated")
      ("ignore-eos", po::bool_switch(&params.ignore_eos), "keep going past end-of-sequence tokens")
      ("output-ids", po::bool_switch(&output_ids), "print the generated ids, comma-separated on the last line")
      ("device", po::value(&device), "cpu or cuda (default cpu)");
  // clang-format on

  std::vector<int32_t> prompt_tokens;
  std::optional<Tokenizer> tokenizer;
  GenerationConfig generation;
  try {
    po::variables_map vm;
    po::store(po::command_line_parser(argc, argv).options(flags).run(), vm);
    if (vm.count("help")) {
      std::cout << flags << "\n";
      return 0;
    }
    po::notify(vm);
    if (vm.count("prompt-ids") + vm.count("prompt") != 1)
      throw ConfigError("give exactly one of --prompt-ids and --prompt");
    if (max_tokens < 1) throw ConfigError("--max-tokens: must be at least 1, got " + std::to_string(max_tokens));
    generation = load_generation_config(model_dir);
    if (std::filesystem::exists(std::filesystem::path(model_dir) / "tokenizer.json"))
      tokenizer = Tokenizer::from_model_dir(model_dir);
    if (vm.count("prompt")) {
      if (!tokenizer) throw ConfigError("--prompt: " + model_dir + " has no tokenizer.json; use --prompt-ids");
      prompt_tokens = tokenizer->encode(prompt);
    } else {
      prompt_tokens = parse_ids(prompt_ids);
    }
    params.max_tokens = max_tokens;
    params.temperature = temperature.value_or(generation.temperature.value_or(1.0));
    params.top_p = top_p.value_or(generation.top_p.value_or(1.0));
    params.top_k = top_k.value_or(generation.top_k.value_or(0));
    params.min_p = min_p.value_or(generation.min_p.value_or(0.0));
    params.repetition_penalty = repetition_penalty.value_or(generation.repetition_penalty.value_or(1.0));
    params.seed = seed;
    if (auto problem = params.check()) throw ConfigError("--" + *problem);
  } catch (const po::error& e) {
    std::fprintf(stderr, "troupe generate: %s\n(see troupe generate --help)\n", e.what());
    return 2;
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "troupe generate: %s\n", e.what());
    return 2;
  }

  try {
    ModelConfig config = load_model_config(model_dir);
    std::vector<int32_t> eos(generation.eos_token_ids.begin(), generation.eos_token_ids.end());
    if (eos.empty()) eos.assign(config.eos_token_ids.begin(), config.eos_token_ids.end());
    for (int32_t id : prompt_tokens)
      if (id >= config.vocab_size)
        throw ConfigError("--prompt-ids: id " + std::to_string(id) + " is outside the vocabulary (" +
                          std::to_string(config.vocab_size) + " ids)");
    auto backend = make_backend(device);
    WeightFiles weights = WeightFiles::open(model_dir);
    const int positions = std::min<int>(config.max_position_embeddings, static_cast<int>(prompt_tokens.size()) + max_tokens);
    Model model(config, weights, *backend, positions, show_progress);

    std::optional<IncrementalDetokenizer> detok;
    const bool stream_text = tokenizer && !output_ids;
    if (stream_text) detok.emplace(*tokenizer);
    auto start = std::chrono::steady_clock::now();
    Generation g = SequenceGenerator(model).generate(prompt_tokens, params, eos, [&](int32_t token) {
      if (stream_text) {
        std::fputs(detok->push(token).c_str(), stdout);
        std::fflush(stdout);
      }
      return true;
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (stream_text) {
      std::fputs(detok->finish().c_str(), stdout);
      std::fputs("\n", stdout);
    } else {
      for (size_t i = 0; i < g.tokens.size(); ++i) std::printf("%s%d", i ? "," : "", g.tokens[i]);
      std::printf("\n");
    }
    std::fprintf(stderr, "%zu prompt tokens, %zu generated in %.2f s (%.1f tokens/s), finish: %s\n",
                 prompt_tokens.size(), g.tokens.size(), seconds, g.tokens.size() / seconds,
                 g.finish == FinishReason::stop ? "stop" : "length");
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "troupe generate: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe generate: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace troupe
