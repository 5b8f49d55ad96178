#include "tools/bench_serve.hpp"

#include <boost/json.hpp>
#include <boost/program_options.hpp>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>

#include "config/error.hpp"
#include "tools/bench_client.hpp"
#include "tools/bench_server_metrics.hpp"
#include "tools/command_error.hpp"
#include "tools/command_flags.hpp"

namespace troupe {
namespace {

namespace po = boost::program_options;
namespace json = boost::json;

std::string first_model(HttpFetcher& fetcher, const std::string& base_url) {
  const HttpReply r = fetcher.get("/v1/models", std::chrono::seconds(30));
  if (r.status != 200)
    throw std::runtime_error("cannot list the models at " + base_url + "/v1/models (" +
                             (r.status ? "HTTP " + std::to_string(r.status) : r.error) + "); give --model");
  boost::system::error_code ec;
  const json::value v = json::parse(r.body, ec);
  const json::value* data = !ec && v.is_object() ? v.as_object().if_contains("data") : nullptr;
  if (!data || !data->is_array() || data->as_array().empty() || !data->as_array()[0].is_object())
    throw std::runtime_error(base_url + "/v1/models lists no model; give --model");
  const json::value* id = data->as_array()[0].as_object().if_contains("id");
  if (!id || !id->is_string()) throw std::runtime_error(base_url + "/v1/models lists a model without an id; give --model");
  return std::string(id->as_string());
}

// The server's /tokenize (vLLM's and troupe's), without special tokens; nullopt once it cannot.
TokenCounter server_token_counter(HttpFetcher& fetcher, const std::string& model) {
  auto available = std::make_shared<bool>(true);
  return [&fetcher, model, available](const std::string& text) -> std::optional<int> {
    if (!*available) return std::nullopt;
    const json::object body{{"model", model}, {"prompt", text}, {"add_special_tokens", false}};
    const HttpReply r = fetcher.post("/tokenize", json::serialize(body), std::chrono::seconds(60));
    boost::system::error_code ec;
    const json::value v = r.status == 200 ? json::parse(r.body, ec) : json::value();
    if (r.status == 200 && !ec && v.is_object()) {
      const json::object& o = v.as_object();
      if (const json::value* c = o.if_contains("count"); c && c->is_int64()) return static_cast<int>(c->as_int64());
      if (const json::value* t = o.if_contains("tokens"); t && t->is_array()) return static_cast<int>(t->as_array().size());
    }
    *available = false;
    return std::nullopt;
  };
}

const char* dataset_name(DatasetKind k) {
  switch (k) {
    case DatasetKind::random: return "random";
    case DatasetKind::shared_prefix: return "shared-prefix";
    case DatasetKind::multi_turn: return "multi-turn";
  }
  return "?";
}

void check_options(const BenchServeOptions& o) {
  const DatasetOptions& d = o.dataset;
  auto at_least = [](const char* flag, long long v, long long min) {
    if (v < min) throw ConfigError(std::string("--") + flag + " must be at least " + std::to_string(min) + ", got " + std::to_string(v));
  };
  at_least("num-prompts", d.num_prompts, 1);
  at_least("input-len", d.input_len, 1);
  at_least("output-len", d.output_len, 1);
  at_least("prefix-groups", d.prefix_groups, 1);
  at_least("prefix-len", d.prefix_len, d.kind == DatasetKind::shared_prefix ? 1 : 0);
  at_least("turns", d.turns, 1);
  at_least("vocab-size", d.vocab_size, 1);
  at_least("max-concurrency", o.max_concurrency, 0);
  at_least("num-warmups", o.num_warmups, 0);
  if (!(d.range_ratio >= 0.0 && d.range_ratio < 1.0))
    throw ConfigError("--range-ratio must be in [0, 1), got " + std::to_string(d.range_ratio));
  if (!(o.request_rate >= 0.0)) throw ConfigError("--request-rate must be positive (or inf), got " + std::to_string(o.request_rate));
  if (!(o.burstiness > 0.0) || std::isinf(o.burstiness))
    throw ConfigError("--burstiness must be a positive number, got " + std::to_string(o.burstiness));
  if (!(o.timeout_s > 0.0)) throw ConfigError("--request-timeout must be positive, got " + std::to_string(o.timeout_s));
  if (o.metrics_interval.count() < 1) throw ConfigError("--metrics-interval must be at least 1 ms");
  parse_base_url(o.base_url);
}

double parse_rate(const std::string& text) {
  if (text == "inf") return std::numeric_limits<double>::infinity();
  size_t used = 0;
  double v = -1;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || !(v > 0)) throw ConfigError("--request-rate: expected a positive number or inf, got '" + text + "'");
  return v;
}

}  // namespace

BenchResult run_bench_serve(const BenchServeOptions& options) {
  check_options(options);
  const BaseUrl url = parse_base_url(options.base_url);
  HttpFetcher fetcher(url, options.api_key);
  const std::string model = options.model.empty() ? first_model(fetcher, options.base_url) : options.model;

  const DatasetOptions& dopt = options.dataset;
  const bool text = dopt.kind == DatasetKind::multi_turn || dopt.format == PromptFormat::text;
  const Dataset dataset = make_dataset(dopt, text ? server_token_counter(fetcher, model) : TokenCounter{});
  if (!dataset.lengths_counted)
    std::fprintf(stderr, "troupe bench serve: the server has no /tokenize: text lengths are word counts\n");

  LoadOptions load;
  load.url = url;
  load.api_key = options.api_key;
  load.model = model;
  load.ignore_eos = options.ignore_eos;
  load.temperature = options.temperature;
  load.max_concurrency = options.max_concurrency;
  load.timeout_s = options.timeout_s;
  load.seed = dopt.seed;

  if (options.num_warmups > 0) {
    // The first prompts (first turns of chats), all at once under the concurrency limit.
    Dataset warm;
    warm.chat = dataset.chat;
    for (int i = 0; i < options.num_warmups; ++i)
      warm.conversations.push_back({{dataset.conversations[i % dataset.conversations.size()].turns[0]}});
    run_load(warm, load);
  }

  load.request_rate = options.request_rate;
  load.burstiness = options.burstiness;
  load.progress = options.progress;
  MetricsPoller poller(url, options.api_key, options.metrics_interval);
  const bool troupe = poller.troupe();
  if (troupe) poller.start();
  LoadResult result = run_load(dataset, load);

  BenchResult r;
  r.server = poller.stop();
  if (!troupe) r.server = {};
  r.base_url = options.base_url;
  r.model = model;
  r.dataset = dataset_name(dopt.kind);
  r.prompt_format = text ? "text" : "ids";
  r.endpoint = dataset.chat ? "/v1/chat/completions" : "/v1/completions";
  r.num_prompts = dopt.num_prompts;
  r.request_rate = options.request_rate > 0 ? options.request_rate : std::numeric_limits<double>::infinity();
  r.burstiness = options.burstiness;
  r.max_concurrency = options.max_concurrency;
  r.slo = options.slo;
  summarize(r, std::move(result));

  if (!options.result_file.empty()) {
    std::ofstream out(options.result_file);
    out << json::serialize(result_json(r)) << "\n";
    if (!out) throw std::runtime_error("cannot write the result file " + options.result_file);
  }
  return r;
}

int bench_serve_command(int argc, char** argv) {
  po::options_description flags("troupe bench serve: an OpenAI-compatible server under load, measured as vLLM's bench serve");
  BenchServeOptions o;
  DatasetOptions& d = o.dataset;
  std::string dataset = "random", format, rate = "inf";
  std::vector<std::string> goodput;
  double temperature = 0;
  long long interval_ms = 250;
  bool no_progress = false;
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("base-url", po::value(&o.base_url)->required(), "the server, http://HOST:PORT")
      ("model", po::value(&o.model), "model name in the requests (default: the first of /v1/models)")
      ("api-key", po::value(&o.api_key), "sent as Authorization: Bearer KEY")
      ("dataset", po::value(&dataset), "random, shared-prefix or multi-turn (default random)")
      ("prompt-format", po::value(&format), "ids (token ids to /v1/completions, the default) or text (random words)")
      ("num-prompts", po::value(&d.num_prompts), "requests in all (default 1000)")
      ("input-len", po::value(&d.input_len), "prompt tokens (shared-prefix: after the prefix; multi-turn: per user turn) (default 1024)")
      ("output-len", po::value(&d.output_len), "max_tokens of each request (default 128)")
      ("range-ratio", po::value(&d.range_ratio), "lengths uniform in [len*(1-r), len*(1+r)] (default 0)")
      ("prefix-groups", po::value(&d.prefix_groups), "shared-prefix: groups of prompts sharing a prefix (default 4)")
      ("prefix-len", po::value(&d.prefix_len), "shared-prefix: tokens of each group's prefix (default 256)")
      ("turns", po::value(&d.turns), "multi-turn: user turns per chat (default 3)")
      ("vocab-size", po::value(&d.vocab_size), "ids format: ids uniform in [0, V) (default 10000)")
      ("seed", po::value(&d.seed), "seed of the dataset and the arrivals (default 0)")
      ("ignore-eos", po::bool_switch(&o.ignore_eos), "send ignore_eos: true (every request runs to max_tokens)")
      ("temperature", po::value(&temperature), "send this temperature (default: the server's)")
      ("request-rate", po::value(&rate), "requests (multi-turn: chats) per second, or inf: all at once (default inf)")
      ("burstiness", po::value(&o.burstiness), "gamma shape of the arrival gaps; 1 is Poisson (default 1)")
      ("max-concurrency", po::value(&o.max_concurrency), "requests in flight at most (default: no limit)")
      ("num-warmups", po::value(&o.num_warmups), "requests sent before the measured run, not counted (default 0)")
      ("goodput", po::value(&goodput)->multitoken(), "SLOs in ms, e.g. ttft:500 tpot:50 e2el:2000")
      ("request-timeout", po::value(&o.timeout_s), "seconds a request may take in all (default 21600)")
      ("metrics-interval", po::value(&interval_ms), "ms between readings of a troupe server's /metrics (default 250)")
      ("result-file", po::value(&o.result_file), "write every figure and per-request arrays as JSON here")
      ("no-progress", po::bool_switch(&no_progress), "no progress bar on stderr");
  // clang-format on
  try {
    const std::optional<po::variables_map> vm = parse_flags(argc, argv, flags);
    if (!vm) return 0;
    if (dataset == "random") d.kind = DatasetKind::random;
    else if (dataset == "shared-prefix") d.kind = DatasetKind::shared_prefix;
    else if (dataset == "multi-turn") d.kind = DatasetKind::multi_turn;
    else throw ConfigError("--dataset: expected random, shared-prefix or multi-turn, got '" + dataset + "'");
    if (format == "text") d.format = PromptFormat::text;
    else if (format == "ids" && d.kind == DatasetKind::multi_turn)
      throw ConfigError("--prompt-format ids does not apply to --dataset multi-turn (chats are text)");
    else if (format == "ids") d.format = PromptFormat::ids;
    else if (!format.empty()) throw ConfigError("--prompt-format: expected ids or text, got '" + format + "'");
    else d.format = d.kind == DatasetKind::multi_turn ? PromptFormat::text : PromptFormat::ids;
    o.request_rate = parse_rate(rate);
    if (vm->count("temperature")) {
      if (!(temperature >= 0)) throw ConfigError("--temperature must be non-negative");
      o.temperature = temperature;
    }
    o.slo = parse_slo(goodput);
    o.metrics_interval = std::chrono::milliseconds(interval_ms);
    o.progress = !no_progress;
    check_options(o);
  } catch (...) {
    return command_error("bench serve");
  }
  try {
    const BenchResult r = run_bench_serve(o);
    std::fputs(format_report(r).c_str(), stdout);
    std::fflush(stdout);
    if (r.completed == 0) {
      std::fprintf(stderr, "troupe bench serve: no request succeeded\n");
      return 1;
    }
    return 0;
  } catch (...) {
    return command_error("bench serve");
  }
}

}  // namespace troupe
