// The engine flags that `troupe generate` and `troupe serve` share, with vLLM's names: the parallel
// layout, the KV cache, batching limits, the device, the trace file and fault injection.
#pragma once

#include <boost/program_options.hpp>
#include <string>

#include "actors/runtime.hpp"

namespace troupe {

class EngineFlags {
 public:
  EngineFlags();
  const boost::program_options::options_description& options() const { return options_; }
  // Fills the runtime options from parsed flags (after notify). Throws ConfigError naming the flag.
  RuntimeOptions runtime_options(const std::string& model_dir) const;

 private:
  boost::program_options::options_description options_{"engine"};
  RuntimeOptions o_;
  std::string kv_cache_memory_;
  std::string inject_fault_;
  std::string all2all_backend_ = "all_to_all";
  bool no_prefix_caching_ = false;
  bool prefix_caching_ = false;
};

// "512MiB", "4GiB", "1e9", "1073741824" -> bytes; ConfigError naming `flag` otherwise.
int64_t parse_bytes(const std::string& text, const std::string& flag);

}  // namespace troupe
