// `troupe sweep`: every chosen parallel layout of a model, each served by its own `troupe serve`
// child process, measured by `troupe bench serve` (in this process) at each concurrency. Writes
// OUT/sweep.json, OUT/sweep.csv, one bench result per point under OUT/points, the servers' logs
// under OUT/logs and the plots under OUT/plots; resumes where an earlier run stopped.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "config/parallel_config.hpp"
#include "tools/sweep_result.hpp"

namespace troupe {

struct SweepOptions {
  std::string model_dir;
  int gpus = 0;
  std::vector<std::string> layouts;  // names (parse_layout_name) or {"all"}
  std::vector<int> concurrency{1, 16, 64, 256, 1024};
  int input_len = 1024, output_len = 256;
  int num_prompts = 0;   // per point; 0: max(waves × concurrency, min_prompts)
  int waves = 4;         // with num_prompts 0: how many times the concurrency each point sends
  int min_prompts = 32;  // with num_prompts 0: the fewest requests a point sends
  int num_warmups = -1;  // per point; -1: min(concurrency, 16)
  std::filesystem::path out_dir = "sweep";
  std::string device, load_format;       // passed to the servers when set
  int port_base = 0;                     // 0: each server picks a free port; else layout i listens on port_base + i
  std::vector<std::string> server_args;  // extra `troupe serve` flags
  std::filesystem::path troupe_binary;   // empty: this process's own binary (/proc/self/exe)
  double start_timeout_s = 900;          // for a server to print its ready line and answer /health
  double stop_timeout_s = 30;            // after SIGTERM, before SIGKILL
  double request_timeout_s = 1800;
  uint64_t seed = 0;
  bool png = true;            // render the plots as PNG too, where a renderer exists
  bool keep_itls = false;     // keep the per-request ITL arrays in the point files (large)
  bool retry_failed = false;  // start layouts again whose server failed in an earlier run
};

// Runs (or resumes) the sweep; progress on stderr. Throws ConfigError for bad options.
SweepData run_sweep(const SweepOptions& options);

int sweep_command(int argc, char** argv);
int advise_command(int argc, char** argv);

}  // namespace troupe
