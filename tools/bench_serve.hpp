// `troupe bench serve`: vLLM's `bench serve` for any OpenAI-compatible server (troupe or another),
// plus troupe's own server figures when the server is troupe. run_bench_serve() is the whole
// benchmark without the command line, for callers in the same process (`troupe sweep`, tests).
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include "tools/bench_dataset.hpp"
#include "tools/bench_stats.hpp"

namespace troupe {

struct BenchServeOptions {
  std::string base_url;  // http://host:port
  std::string model;     // empty: the first model /v1/models lists
  std::string api_key;
  DatasetOptions dataset;
  bool ignore_eos = false;
  std::optional<double> temperature;
  double request_rate = 0.0;  // 0 or inf: every request at once
  double burstiness = 1.0;
  int max_concurrency = 0;    // 0: no limit
  int num_warmups = 0;        // requests sent (and waited for) before the measured run
  double timeout_s = 6 * 3600.0;
  Slo slo;
  std::chrono::milliseconds metrics_interval{250};
  bool progress = false;      // a progress bar on stderr when it is a terminal
  std::string result_file;    // when set, result_json() is written there
};

// Runs the benchmark. Throws ConfigError for bad options, std::runtime_error when the server cannot
// be asked for its model list (with no --model) or the result file cannot be written.
BenchResult run_bench_serve(const BenchServeOptions& options);

// The command line: `troupe bench serve --base-url URL [--model NAME] [...]`; exit 2 on a bad flag.
int bench_serve_command(int argc, char** argv);

}  // namespace troupe
