// `troupe generate`: prompts through the actor runtime, continuations printed as they are sampled.
// One prompt (--prompt-ids, --prompt, --chat) streams its text; --prompts-file runs a batch (one
// JSON value per line) and prints one JSON result per line, with throughput on stderr.
#include <boost/json.hpp>
#include <boost/program_options.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>

#include "actors/runtime.hpp"
#include "config/error.hpp"
#include "config/generation_config.hpp"
#include "engine/chat_template.hpp"
#include "engine/incremental_detokenizer.hpp"
#include "engine/tokenizer.hpp"
#include "tools/command_error.hpp"
#include "tools/command_flags.hpp"
#include "tools/commands.hpp"
#include "tools/engine_flags.hpp"

namespace troupe {
namespace {

namespace po = boost::program_options;

std::vector<int32_t> parse_ids(const std::string& text, const std::string& flag) {
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
      throw ConfigError("--" + flag + ": expected comma-separated non-negative token ids, got '" + item + "'");
    ids.push_back(static_cast<int32_t>(v));
  }
  if (ids.empty()) throw ConfigError("--" + flag + ": no ids given");
  return ids;
}

// Events from actor threads, consumed in order by the main thread.
class EventQueue {
 public:
  void push(const RequestEvent& e) {
    std::lock_guard lock(m_);
    q_.push_back(e);
    cv_.notify_one();
  }
  RequestEvent pop() {
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] { return !q_.empty(); });
    RequestEvent e = std::move(q_.front());
    q_.pop_front();
    return e;
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<RequestEvent> q_;
};

const char* finish_name(const RequestEvent& e) {
  if (!e.error.empty()) return "error";
  if (e.aborted) return "abort";
  return e.finish == FinishReason::stop ? "stop" : "length";
}

struct BatchItem {
  std::vector<int32_t> prompt;
  std::optional<int> max_tokens;
};

std::vector<BatchItem> read_prompts_file(const std::string& path, const std::optional<Tokenizer>& tokenizer) {
  std::ifstream in(path);
  if (!in) throw ConfigError("--prompts-file: cannot open '" + path + "'");
  std::vector<BatchItem> items;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = "--prompts-file: line " + std::to_string(number) + ": ";
    boost::system::error_code ec;
    boost::json::value v = boost::json::parse(line, ec);
    if (ec) throw ConfigError(where + "not JSON (" + ec.message() + ")");
    BatchItem item;
    auto encode = [&](const boost::json::string& text) {
      if (!tokenizer) throw ConfigError(where + "text needs the model's tokenizer.json; give \"prompt_ids\"");
      return tokenizer->encode(std::string_view(text));
    };
    if (v.is_string()) {
      item.prompt = encode(v.as_string());
    } else if (v.is_object() && v.as_object().contains("prompt") && v.at("prompt").is_string()) {
      item.prompt = encode(v.at("prompt").as_string());
    } else if (v.is_object() && v.as_object().contains("prompt_ids") && v.at("prompt_ids").is_array()) {
      for (const auto& id : v.at("prompt_ids").as_array()) {
        if (!id.is_int64() || id.as_int64() < 0) throw ConfigError(where + "prompt_ids must be non-negative integers");
        item.prompt.push_back(static_cast<int32_t>(id.as_int64()));
      }
    } else {
      throw ConfigError(where + "expected a JSON string, {\"prompt\": \"...\"} or {\"prompt_ids\": [...]}");
    }
    if (v.is_object() && v.as_object().contains("max_tokens")) {
      if (!v.at("max_tokens").is_int64() || v.at("max_tokens").as_int64() < 1) throw ConfigError(where + "max_tokens must be a positive integer");
      item.max_tokens = static_cast<int>(v.at("max_tokens").as_int64());
    }
    items.push_back(std::move(item));
  }
  if (items.empty()) throw ConfigError("--prompts-file: '" + path + "' holds no prompt");
  return items;
}

}  // namespace

int generate_command(int argc, char** argv) {
  po::options_description flags("troupe generate: run prompts through a model and print the continuations");
  EngineFlags engine;
  std::string model_dir, prompt_ids, prompt, chat, prompts_file, chat_template_file;
  SamplingParams params;
  int max_tokens = 16;
  std::optional<double> temperature, top_p, min_p, repetition_penalty;
  std::optional<int> top_k;
  std::optional<int64_t> seed;
  bool output_ids = false, quiet = false;
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("model", po::value(&model_dir)->required(), "Hugging Face model directory")
      ("prompt-ids", po::value(&prompt_ids), "prompt as comma-separated token ids")
      ("prompt", po::value(&prompt), "prompt text (needs the model's tokenizer.json)")
      ("chat", po::value(&chat), "a user message, put through the model's chat template")
      ("chat-template", po::value(&chat_template_file), "a Jinja chat template file instead of the model's")
      ("prompts-file", po::value(&prompts_file),
       "batch mode: one prompt per line as a JSON string, {\"prompt\": ...} or {\"prompt_ids\": [...]} (optional \"max_tokens\")")
      ("max-tokens", po::value(&max_tokens), "tokens to generate at most (default 16)")
      ("temperature", po::value<double>()->notifier([&](double v) { temperature = v; }),
       "sampling temperature; 0 is greedy (default: the model's generation_config.json, else 1)")
      ("top-p", po::value<double>()->notifier([&](double v) { top_p = v; }), "nucleus sampling mass in (0, 1]")
      ("top-k", po::value<int>()->notifier([&](int v) { top_k = v; }), "keep the k most likely tokens (0: off)")
      ("min-p", po::value<double>()->notifier([&](double v) { min_p = v; }), "drop tokens below min-p x the top probability")
      ("seed", po::value<int64_t>()->notifier([&](int64_t v) { seed = v; }), "random seed: same seed, same output")
      ("repetition-penalty", po::value<double>()->notifier([&](double v) { repetition_penalty = v; }), "penalty on tokens seen (1: off)")
      ("presence-penalty", po::value(&params.presence_penalty), "penalty on tokens generated at least once")
      ("frequency-penalty", po::value(&params.frequency_penalty), "penalty per time a token was generated")
      ("ignore-eos", po::bool_switch(&params.ignore_eos), "keep going past end-of-sequence tokens")
      ("output-ids", po::bool_switch(&output_ids), "print the generated ids, comma-separated on the last line")
      ("quiet", po::bool_switch(&quiet), "no start-up lines on stderr");
  // clang-format on
  flags.add(engine.options());

  RuntimeOptions options;
  std::optional<Tokenizer> tokenizer;
  std::vector<BatchItem> batch;
  try {
    const std::optional<po::variables_map> vm = parse_flags(argc, argv, flags);
    if (!vm) return 0;
    if (vm->count("prompt-ids") + vm->count("prompt") + vm->count("chat") + vm->count("prompts-file") != 1)
      throw ConfigError("give exactly one of --prompt-ids, --prompt, --chat and --prompts-file");
    if (max_tokens < 1) throw ConfigError("--max-tokens: must be at least 1, got " + std::to_string(max_tokens));
    options = engine.runtime_options(model_dir);
    GenerationConfig generation = load_generation_config(model_dir);
    if (std::filesystem::exists(std::filesystem::path(model_dir) / "tokenizer.json")) tokenizer = Tokenizer::from_model_dir(model_dir);
    if (vm->count("prompt-ids")) {
      batch.push_back({parse_ids(prompt_ids, "prompt-ids"), {}});
    } else if (vm->count("prompt") || vm->count("chat")) {
      if (!tokenizer) throw ConfigError(model_dir + " has no tokenizer.json; use --prompt-ids");
      if (vm->count("chat")) {
        std::optional<std::filesystem::path> file;
        if (!chat_template_file.empty()) file = chat_template_file;
        ChatTemplate tmpl = ChatTemplate::from_model_dir(model_dir, file);
        boost::json::array messages{{{"role", "user"}, {"content", chat}}};
        // As apply_chat_template(tokenize=True): the rendered text holds its special tokens already.
        batch.push_back({tokenizer->encode(tmpl.render_json(boost::json::serialize(messages), {}, true), false), {}});
      } else {
        batch.push_back({tokenizer->encode(prompt), {}});
      }
    } else {
      batch = read_prompts_file(prompts_file, tokenizer);
    }
    params.max_tokens = max_tokens;
    params.temperature = temperature.value_or(generation.temperature.value_or(1.0));
    params.top_p = top_p.value_or(generation.top_p.value_or(1.0));
    params.top_k = top_k.value_or(generation.top_k.value_or(0));
    params.min_p = min_p.value_or(generation.min_p.value_or(0.0));
    params.repetition_penalty = repetition_penalty.value_or(generation.repetition_penalty.value_or(1.0));
    params.seed = seed;
    if (auto problem = params.check()) throw ConfigError("--" + *problem);
  } catch (...) {
    return command_error("generate", 2);
  }

  if (!quiet) options.log = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  try {
    auto runtime = std::make_unique<Runtime>(options);
    // A failed engine's worker may still be blocked in a collective (the runtime then abandons it):
    // exit-time destructors must not wait on it.
    auto leave_failed = [&](bool said) {
      if (!said) std::fprintf(stderr, "troupe generate: %s\n", runtime->failure().c_str());
      runtime.reset();
      std::fflush(stdout);
      std::fflush(stderr);
      std::_Exit(1);
    };
    EventQueue events;
    const auto start = std::chrono::steady_clock::now();
    std::vector<uint64_t> ids;
    try {
      for (const BatchItem& item : batch) {
        SamplingParams p = params;
        if (item.max_tokens) p.max_tokens = *item.max_tokens;
        ids.push_back(runtime->submit(item.prompt, p, [&events](const RequestEvent& e) { events.push(e); }));
      }
    } catch (const RequestError&) {
      if (runtime->healthy()) throw;
      leave_failed(false);
    }
    std::unordered_map<uint64_t, size_t> index;
    for (size_t i = 0; i < ids.size(); ++i) index[ids[i]] = i;

    const bool single = batch.size() == 1 && prompts_file.empty();
    const bool stream_text = single && tokenizer && !output_ids;
    std::optional<IncrementalDetokenizer> detok;
    if (stream_text) detok.emplace(*tokenizer);
    std::vector<std::vector<int32_t>> outputs(batch.size());
    std::vector<RequestEvent> finals(batch.size());
    size_t done = 0;
    int64_t generated = 0, prompt_tokens = 0;
    while (done < batch.size()) {
      RequestEvent e = events.pop();
      const size_t i = index.at(e.id);
      for (const TokenOut& t : e.tokens) {
        outputs[i].push_back(t.token);
        if (stream_text) {
          std::fputs(detok->push(t.token).c_str(), stdout);
          std::fflush(stdout);
        }
      }
      if (!e.final()) continue;
      finals[i] = e;
      generated += e.output_tokens;
      prompt_tokens += e.prompt_tokens;
      ++done;
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    int failures = 0;
    for (const RequestEvent& f : finals) failures += !f.error.empty();
    if (single) {
      if (stream_text) {
        std::fputs(detok->finish().c_str(), stdout);
        std::fputs("\n", stdout);
      } else {
        for (size_t k = 0; k < outputs[0].size(); ++k) std::printf("%s%d", k ? "," : "", outputs[0][k]);
        std::printf("\n");
      }
      if (!finals[0].error.empty()) std::fprintf(stderr, "troupe generate: %s\n", finals[0].error.c_str());
    } else {
      for (size_t i = 0; i < batch.size(); ++i) {
        boost::json::object row{{"index", i}, {"finish_reason", finish_name(finals[i])}};
        boost::json::array ids_json(outputs[i].begin(), outputs[i].end());
        row["token_ids"] = std::move(ids_json);
        if (tokenizer) row["text"] = tokenizer->decode(outputs[i]);
        if (!finals[i].error.empty()) row["error"] = finals[i].error;
        std::printf("%s\n", boost::json::serialize(row).c_str());
      }
    }
    std::fflush(stdout);
    std::fprintf(stderr, "%zu requests, %lld prompt and %lld generated tokens in %.2f s: %.1f generated tokens/s\n",
                 batch.size(), static_cast<long long>(prompt_tokens), static_cast<long long>(generated), seconds,
                 generated / seconds);
    if (!runtime->healthy()) leave_failed(single && !finals[0].error.empty());
    return failures ? 1 : 0;
  } catch (...) {
    return command_error("generate");
  }
}

}  // namespace troupe
