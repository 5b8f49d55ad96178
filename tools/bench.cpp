// `troupe bench decode|prefill`: a model's step time on one device against the hardware's limits,
// measured in the same run. Decode is memory-bound: its floor is the bytes a step must read (the
// weights it multiplies by, the KV cache it attends over) over the measured copy bandwidth. Prefill
// is compute-bound: its rate is model FLOPs over time, against the measured bf16 GEMM rate.
#include <boost/program_options.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <string_view>
#include <thread>

#include "config/error.hpp"
#include "config/model_config.hpp"
#include "engine/cpu_backend.hpp"
#include "engine/decode_graphs.hpp"
#include "engine/model.hpp"
#include "tools/bench_serve.hpp"
#include "tools/command_error.hpp"
#include "tools/command_flags.hpp"
#include "tools/commands.hpp"
#ifdef TROUPE_HAVE_CUDA
#include "kernels/ceilings.hpp"
#include "kernels/cuda_backend.hpp"
#include "kernels/nccl_communicator.hpp"
#endif

namespace troupe {
namespace {

namespace po = boost::program_options;
using Clock = std::chrono::steady_clock;

std::vector<int> parse_list(const std::string& text) {
  std::vector<int> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::stoi(item));
  return out;
}

struct Ceilings {
  double copy_bandwidth = 0;  // bytes/s, read + write
  double gemm_rate = 0;       // FLOP/s
};

// Matmul parameters a token passes through (every linear layer; for MoE the routed experts a token
// visits and the shared expert): 2 FLOPs each per token.
double flops_per_token(const ModelConfig& c) {
  const double h = c.hidden_size, q = c.q_size(), kv = c.kv_size();
  double per_layer_attention = h * (q + 2 * kv) + q * h;
  double total = 0;
  for (int l = 0; l < c.num_layers; ++l) {
    double mlp;
    if (c.is_moe_layer(l)) {
      mlp = c.num_experts_per_tok * 3.0 * h * c.moe_intermediate_size + h * c.num_experts;
      if (c.has_shared_expert()) mlp += 3.0 * h * c.shared_expert_intermediate_size + h;
    } else {
      mlp = 3.0 * h * c.intermediate_size;
    }
    total += per_layer_attention + mlp;
  }
  return 2.0 * total;
}

// Bytes of weights one decode step reads: every matrix once, routed experts only those some token
// visits (all of them from batch ≈ E / k up; counted exactly below as the expected distinct experts
// for uniform routing), the embedding rows of the batch only.
double weight_bytes_read(const ModelConfig& c, int batch) {
  const double h = c.hidden_size, q = c.q_size(), kv = c.kv_size(), es = 2.0;
  double bytes = c.vocab_size * h * es;  // LM head
  for (int l = 0; l < c.num_layers; ++l) {
    bytes += (h * (q + 2 * kv) + q * h + 2 * h) * es;
    if (c.is_moe_layer(l)) {
      const double e = c.num_experts, k = c.num_experts_per_tok;
      const double visited = e * (1.0 - std::pow(1.0 - k / e, batch));
      bytes += visited * 3.0 * h * c.moe_intermediate_size * es + h * e * es;
      if (c.has_shared_expert()) bytes += (3.0 * h * c.shared_expert_intermediate_size + h) * es;
    } else {
      bytes += 3.0 * h * c.intermediate_size * es;
    }
  }
  return bytes;
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Token ids for the bench's sequences, the same sequence for every caller that starts afresh (the
// ranks of a tensor-parallel group must feed the same tokens).
class RandomIds {
 public:
  explicit RandomIds(int64_t vocab) : vocab_(vocab) {}
  std::vector<int32_t> operator()(int n) {
    std::vector<int32_t> ids(n);
    for (int32_t& id : ids) id = static_cast<int32_t>(rng_() % vocab_);
    return ids;
  }

 private:
  int64_t vocab_;
  std::mt19937 rng_{7};
};

constexpr int kBlockSize = 16;  // KV cache block size of the bench's caches

// One rank's decode measurement at batch b: fills every sequence's context, then times `steps`
// decode steps as the runner takes them (a replayed graph where the backend has graphs). Every rank
// of a tensor-parallel group calls it with the same arguments (the same random tokens: the same
// seed), so their collectives pair up. Seconds per step.
double time_decode(Model& model, Backend& backend, int b, int context, int steps, int max_len) {
  RandomIds random_ids(model.config().vocab_size);
  constexpr int bs = kBlockSize;
  const int per_seq = (context + steps + bs) / bs + 1;
  KvCache cache = model.allocate_kv_cache(b * per_seq, bs);
  std::vector<std::vector<int32_t>> tables(b);
  for (int s = 0; s < b; ++s)
    for (int k = 0; k < per_seq; ++k) tables[s].push_back(s * per_seq + k);
  // Fill every sequence's context, a few sequences per forward.
  for (int s0 = 0; s0 < b; s0 += 8) {
    StepBatch prefill;
    for (int s = s0; s < std::min(b, s0 + 8); ++s) prefill.add_sequence(random_ids(context), 0, tables[s]);
    model.forward(prefill, cache);
  }
  auto decode_batch = [&](int step) {
    StepBatch d;
    for (int s = 0; s < b; ++s) d.add_sequence(random_ids(1), context + step, tables[s]);
    return d;
  };
  std::vector<StepBatch> plans;
  for (int i = 0; i < steps + 2; ++i) plans.push_back(decode_batch(i));
  DecodeGraphs graphs(model, max_len, {b});
  auto step = [&](const StepBatch& plan) {
    if (!graphs.forward(plan, cache)) model.forward(plan, cache);
  };
  step(plans[0]);
  step(plans[1]);
  backend.synchronize();
  const auto t0 = Clock::now();
  for (int i = 2; i < steps + 2; ++i) step(plans[i]);
  backend.synchronize();
  return seconds_since(t0) / steps;
}

// A row of the decode table: the step's time, and against the floor of the bytes each rank reads
// (a tensor-parallel rank reads about 1/tp of the weights and of the KV cache).
void print_decode_row(const ModelConfig& c, int b, int context, int steps, int tp, double s, const Ceilings& ceil) {
  const double kv = 2.0 * b * (context + steps / 2.0) * c.num_layers * c.kv_size() * 2.0;
  const double bytes = weight_bytes_read(c, b) + kv;
  std::printf("%6d %10.3f %12.0f %12.3f", b, s * 1e3, b / s, bytes / tp / 1e9);
  if (ceil.copy_bandwidth > 0) {
    const double floor_s = bytes / tp / ceil.copy_bandwidth;
    std::printf(" %14.3f %9.1f%%", floor_s * 1e3, 100.0 * floor_s / s);
  }
  std::printf("\n");
  std::fflush(stdout);
}

void print_decode_header(int tp) {
  std::printf("%6s %10s %12s %12s %14s %10s\n", "batch", "ms/step", "tokens/s", tp > 1 ? "GB/rank" : "GB read",
              "roofline ms", "of roof");
}

#ifdef TROUPE_HAVE_CUDA
// The decode table of a tensor-parallel group of `tp` GPUs (0 … tp-1) in this process, one thread per
// rank as the workers run them: each rank loads its slices, then every rank times the same steps
// (the group's all-reduces keep them in step); rank 0 prints. No actors, scheduler or sampler: what
// the GPUs take for a step, to set beside the served time per token.
void bench_tensor_parallel(const ModelConfig& c, const WeightFiles* files, int tp, bool nccl_only,
                           const std::vector<int>& batches, int context, int steps, int max_len, const Ceilings& ceil) {
  std::shared_ptr<cuda::PeerAllReduceGroup> peer;
  if (!nccl_only) {
    std::vector<int> devices(tp);
    std::iota(devices.begin(), devices.end(), 0);
    std::string why;
    peer = make_peer_all_reduce_group(devices, &why);
    if (!peer) std::printf("peer all-reduce off (NCCL alone): %s\n", why.c_str());
  }
  const NcclUniqueId id = make_nccl_unique_id();
  std::vector<std::exception_ptr> errors(tp);
  std::vector<std::thread> ranks;
  for (int r = 0; r < tp; ++r)
    ranks.emplace_back([&, r] {
      try {
        auto backend = make_cuda_backend(r);
        auto comm = make_nccl_communicator(*backend, id, r, tp, peer);
        ModelShard shard;
        shard.layout.tensor_parallel_size = tp;
        shard.tp_rank = r;
        ShardComms comms;
        comms.tp = comm.get();
        const auto load_start = Clock::now();
        Model model(c, files, *backend, max_len, {}, shard, comms);
        backend->synchronize();
        if (r == 0) {
          std::printf("model (%s) over %d GPUs, %.2f GB of weights on rank 0, loaded in %.1f s; all-reduce: %s\n",
                      std::string(architecture_name(c.arch)).c_str(), tp, model.weight_bytes() / 1e9,
                      seconds_since(load_start), peer ? "peer kernel below its limit, NCCL above" : "NCCL");
          print_decode_header(tp);
        }
        for (int b : batches) {
          const double s = time_decode(model, *backend, b, context, steps, max_len);
          if (r == 0) print_decode_row(c, b, context, steps, tp, s, ceil);
        }
        backend->synchronize();
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  for (auto& t : ranks) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}
#endif

}  // namespace

int bench_command(int argc, char** argv) {
  if (argc > 1 && std::string_view(argv[1]) == "serve") return bench_serve_command(argc - 1, argv + 1);
  po::options_description flags("troupe bench decode|prefill: step time against the device's measured limits");
  std::string mode, model_dir, batches = "1,8,64,256", load_format = "auto", device = "auto";
  int context = 256, steps = 32, tokens = 4096, graph_context = 0, tp = 1;
  bool disable_custom_all_reduce = false;
  // clang-format off
  flags.add_options()
      ("help,h", "show this help")
      ("mode", po::value(&mode)->required(), "decode or prefill (serve: see troupe bench serve --help)")
      ("model", po::value(&model_dir)->required(), "model directory (config.json; weights unless --load-format dummy)")
      ("load-format", po::value(&load_format), "auto or dummy (random weights generated on the device)")
      ("device", po::value(&device), "auto, cpu or cuda")
      ("batch", po::value(&batches), "decode: batch sizes (default 1,8,64,256)")
      ("context", po::value(&context), "decode: tokens already in each sequence's cache (default 256)")
      ("steps", po::value(&steps), "decode: timed steps per batch size (default 32)")
      ("graph-context", po::value(&graph_context),
       "decode: the context length the decode graphs are captured for (default: context + steps + 16;\n"
       "troupe serve captures them for the model's whole length, which some attention launches read)")
      ("tokens", po::value(&tokens), "prefill: prompt length (default 4096)")
      ("tensor-parallel-size", po::value(&tp),
       "decode: over this many GPUs (0 … N-1) as one tensor-parallel group, the model alone (default 1)")
      ("disable-custom-all-reduce", po::bool_switch(&disable_custom_all_reduce),
       "decode with --tensor-parallel-size: all-reduces through NCCL only");
  // clang-format on
  po::positional_options_description positional;
  positional.add("mode", 1);
  try {
    if (!parse_flags(argc, argv, flags, &positional)) return 0;
    if (mode != "decode" && mode != "prefill") throw ConfigError("expected decode or prefill, got '" + mode + "'");
    if (tp < 1) throw ConfigError("--tensor-parallel-size must be at least 1, got " + std::to_string(tp));
    if (tp > 1 && mode != "decode") throw ConfigError("--tensor-parallel-size is for bench decode");
  } catch (...) {
    return command_error("bench", 2);
  }

  try {
    const ModelConfig c = load_model_config(model_dir);
    std::unique_ptr<Backend> backend;
    Ceilings ceil;
#ifdef TROUPE_HAVE_CUDA
    if (device == "auto") device = cuda_device_count() > 0 ? "cuda" : "cpu";
    if (device == "cuda") {
      backend = make_cuda_backend(0);
      ceil.copy_bandwidth = measure_copy_bandwidth(0);
      ceil.gemm_rate = measure_gemm_rate(*backend);
      std::printf("ceilings: device copy %.0f GB/s (read + write), bf16 GEMM %.0f TFLOP/s (8192^3, cuBLASLt)\n",
                  ceil.copy_bandwidth / 1e9, ceil.gemm_rate / 1e12);
    }
#endif
    if (!backend) backend = make_cpu_backend();
    std::optional<WeightFiles> files;
    if (load_format != "dummy") files.emplace(WeightFiles::open(model_dir));
    const int max_len = mode == "prefill" ? tokens + 16 : std::max(context + steps + 16, graph_context);
    if (tp > 1) {
#ifdef TROUPE_HAVE_CUDA
      if (device != "cuda" || cuda_device_count() < tp)
        throw ConfigError("--tensor-parallel-size " + std::to_string(tp) + " needs as many CUDA devices; " +
                          std::to_string(device == "cuda" ? cuda_device_count() : 0) + " visible");
      backend.reset();  // rank 0 makes its own on device 0
      bench_tensor_parallel(c, files ? &*files : nullptr, tp, disable_custom_all_reduce, parse_list(batches), context,
                            steps, max_len, ceil);
      return 0;
#else
      throw ConfigError("--tensor-parallel-size needs a CUDA build");
#endif
    }
    const auto load_start = Clock::now();
    Model model(c, files ? &*files : nullptr, *backend, max_len, {}, {}, {});
    backend->synchronize();
    std::printf("model %s (%s), %.2f GB of weights on %s, loaded in %.1f s\n", model_dir.c_str(),
                std::string(architecture_name(c.arch)).c_str(), model.weight_bytes() / 1e9, device.c_str(),
                seconds_since(load_start));
    RandomIds random_ids(c.vocab_size);
    constexpr int bs = kBlockSize;

    if (mode == "prefill") {
      const int blocks = (tokens + bs - 1) / bs;
      KvCache cache = model.allocate_kv_cache(blocks, bs);
      std::vector<int32_t> table(blocks);
      std::iota(table.begin(), table.end(), 0);
      StepBatch batch;
      batch.add_sequence(random_ids(tokens), 0, table);
      std::vector<double> times;
      for (int i = 0; i < 5; ++i) {
        backend->synchronize();
        const auto t0 = Clock::now();
        model.forward(batch, cache);
        backend->synchronize();
        if (i > 0) times.push_back(seconds_since(t0));
      }
      std::sort(times.begin(), times.end());
      const double s = times[times.size() / 2];
      const double attention = 2.0 * 2.0 * c.num_layers * c.q_size() * static_cast<double>(tokens) * tokens / 2;
      const double flops = flops_per_token(c) * tokens + attention;
      std::printf("prefill %d tokens: %.1f ms, %.0f tokens/s, %.0f TFLOP/s", tokens, s * 1e3, tokens / s, flops / s / 1e12);
      if (ceil.gemm_rate > 0) std::printf(" = %.1f%% of the measured GEMM rate", 100.0 * flops / s / ceil.gemm_rate);
      std::printf("\n");
      return 0;
    }

    print_decode_header(1);
    for (int b : parse_list(batches))
      print_decode_row(c, b, context, steps, 1, time_decode(model, *backend, b, context, steps, max_len), ceil);
    return 0;
  } catch (...) {
    return command_error("bench");
  }
}

}  // namespace troupe
