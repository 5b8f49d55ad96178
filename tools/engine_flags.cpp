#include "tools/engine_flags.hpp"

#include <cmath>

#include "config/error.hpp"

namespace troupe {

namespace po = boost::program_options;

int64_t parse_bytes(const std::string& text, const std::string& flag) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  const std::string unit = text.substr(used);
  double scale = 0;
  if (unit.empty() || unit == "B") scale = 1;
  if (unit == "KiB") scale = 1024.0;
  if (unit == "MiB") scale = 1024.0 * 1024;
  if (unit == "GiB") scale = 1024.0 * 1024 * 1024;
  if (unit == "KB") scale = 1e3;
  if (unit == "MB") scale = 1e6;
  if (unit == "GB") scale = 1e9;
  if (used == 0 || scale == 0 || !(value > 0) || !std::isfinite(value * scale))
    throw ConfigError("--" + flag + ": expected a positive size such as 512MiB or 4GiB, got '" + text + "'");
  return static_cast<int64_t>(value * scale);
}

EngineFlags::EngineFlags() {
  // clang-format off
  options_.add_options()
      ("tensor-parallel-size", po::value(&o_.parallel.tensor_parallel_size), "tensor-parallel ranks per pipeline stage (default 1)")
      ("pipeline-parallel-size", po::value(&o_.parallel.pipeline_parallel_size), "pipeline stages (default 1)")
      ("data-parallel-size", po::value(&o_.parallel.data_parallel_size), "data-parallel replicas (default 1)")
      ("enable-expert-parallel", po::bool_switch(&o_.parallel.enable_expert_parallel),
       "place whole experts over the tensor x data parallel ranks instead of slicing every expert")
      ("device", po::value(&o_.device), "auto, cpu or cuda (default auto: cuda when a GPU is visible)")
      ("load-format", po::value(&o_.load_format), "auto (the model's safetensors) or dummy (random weights from config.json)")
      ("gpu-memory-utilization", po::value(&o_.gpu_memory_utilization),
       "share of each GPU's memory for weights, KV cache and activations (default 0.9)")
      ("block-size", po::value(&o_.block_size), "tokens per KV cache block (default 16)")
      ("kv-cache-memory", po::value(&kv_cache_memory_), "KV cache bytes per worker, e.g. 512MiB (default 256MiB on the CPU)")
      ("num-gpu-blocks-override", po::value(&o_.num_blocks_override), "exactly this many KV blocks per worker")
      ("enable-prefix-caching", po::bool_switch(&prefix_caching_), "reuse the KV of shared prompt prefixes (the default)")
      ("no-enable-prefix-caching", po::bool_switch(&no_prefix_caching_), "turn prefix caching off")
      ("all2all-backend", po::value(&all2all_backend_),
       "how MoE layers with --enable-expert-parallel and dp > 1 exchange tokens: all_to_all (each token to its experts' "
       "ranks and back, the default) or allgather_reducescatter (every rank gathers all tokens and computes its experts)")
      ("enforce-eager", po::bool_switch(&o_.enforce_eager), "run decode steps kernel by kernel (no CUDA graphs)")
      ("disable-custom-all-reduce", po::bool_switch(&o_.disable_custom_all_reduce),
       "tensor-parallel all-reduces through NCCL only (not the peer-memory kernel for small messages)")
      ("max-num-seqs", po::value(&o_.max_num_seqs), "sequences in one step at most (default 256)")
      ("max-num-batched-tokens", po::value(&o_.max_num_batched_tokens), "tokens in one step at most (default 2048)")
      ("max-model-len", po::value(&o_.max_model_len), "prompt + output tokens of a request at most (default: the model's)")
      ("trace-file", po::value<std::string>()->notifier([this](const std::string& v) { o_.trace_file = v; }),
       "write a Chrome trace of the message flow (open in Perfetto)")
      ("inject-fault", po::value(&inject_fault_),
       "for testing failure handling: RANK:STEP makes the worker of world rank RANK fail its step STEP (0: its "
       "first) as a failed CUDA or NCCL call would; the engine is then dead: /health says 503, requests fail");
  // clang-format on
}

RuntimeOptions EngineFlags::runtime_options(const std::string& model_dir) const {
  RuntimeOptions o = o_;
  o.model_dir = model_dir;
  if (prefix_caching_ && no_prefix_caching_)
    throw ConfigError("--enable-prefix-caching and --no-enable-prefix-caching contradict each other");
  o.enable_prefix_caching = !no_prefix_caching_;
  if (!kv_cache_memory_.empty()) o.kv_cache_memory = parse_bytes(kv_cache_memory_, "kv-cache-memory");
  if (o.device != "auto" && o.device != "cpu" && o.device != "cuda")
    throw ConfigError("--device: expected auto, cpu or cuda, got '" + o.device + "'");
  if (o.load_format != "auto" && o.load_format != "dummy")
    throw ConfigError("--load-format: expected auto or dummy, got '" + o.load_format + "'");
  if (!(o.gpu_memory_utilization > 0 && o.gpu_memory_utilization <= 1))
    throw ConfigError("--gpu-memory-utilization must be in (0, 1], got " + std::to_string(o.gpu_memory_utilization));
  auto at_least = [](int v, int min, const char* flag) {
    if (v < min) throw ConfigError(std::string("--") + flag + " must be at least " + std::to_string(min) + ", got " + std::to_string(v));
  };
  at_least(o.max_num_seqs, 1, "max-num-seqs");
  at_least(o.max_num_batched_tokens, 1, "max-num-batched-tokens");
  at_least(o.block_size, 1, "block-size");
  if (o.max_model_len != 0) at_least(o.max_model_len, 1, "max-model-len");
  if (o.num_blocks_override != 0) at_least(o.num_blocks_override, 1, "num-gpu-blocks-override");
  o.moe_exchange = parse_moe_exchange(all2all_backend_);
  if (!inject_fault_.empty()) {
    const size_t colon = inject_fault_.find(':');
    auto number = [&](const std::string& part) -> int64_t {
      if (part.empty() || part.size() > 18 || part.find_first_not_of("0123456789") != std::string::npos)
        throw ConfigError("--inject-fault: expected RANK:STEP (non-negative integers, e.g. 1:20), got '" + inject_fault_ + "'");
      return std::stoll(part);
    };
    if (colon == std::string::npos) number("");
    o.inject_fault_rank = number(inject_fault_.substr(0, colon));
    o.inject_fault_step = number(inject_fault_.substr(colon + 1));
    check_fault_injection(o);  // before serve reads the tokenizer or anything else
  }
  return o;
}

}  // namespace troupe
