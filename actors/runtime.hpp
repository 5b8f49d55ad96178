// The actor runtime as the rest of troupe sees it: build the actor graph of DESIGN.md for a model and
// a parallel layout, submit token-level requests, receive their tokens, abort them. No CAF type
// appears here, so net/ and tools/ include this header without CAF's compile cost.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "actors/client.hpp"
#include "config/model_config.hpp"
#include "config/parallel_config.hpp"
#include "engine/sampler.hpp"

namespace troupe {

class TextPipeline;

struct RuntimeOptions {
  std::filesystem::path model_dir;
  std::string model_name;  // the model_name label of the metrics; default: the directory's name
  ParallelConfig parallel;
  std::string device = "auto";  // cuda when a GPU is visible, else cpu
  std::string load_format = "auto";  // or "dummy": random weights from config.json alone (vLLM's name)
  double gpu_memory_utilization = 0.9;  // share of each GPU's memory troupe may use (weights, KV, work)
  int block_size = 16;
  int64_t kv_cache_memory = 0;   // bytes of KV cache per worker; 0: 256 MiB on the CPU, else from
                                 // --gpu-memory-utilization once weights are loaded
  int num_blocks_override = 0;   // vLLM's --num-gpu-blocks-override: exactly this many blocks
  bool enable_prefix_caching = true;
  bool enforce_eager = false;              // vLLM's name: no CUDA graphs of decode steps
  bool disable_custom_all_reduce = false;  // vLLM's name: GPU all-reduces through NCCL alone
  MoeExchange moe_exchange = MoeExchange::all_to_all;  // vLLM's --all2all-backend (EP across dp ranks)
  int max_num_seqs = 256;
  int max_num_batched_tokens = 2048;
  int max_model_len = 0;  // 0: the model's max_position_embeddings, capped by the KV cache's capacity
  std::filesystem::path trace_file;  // Chrome trace of the message flow, written at shutdown
  int actor_threads = 0;             // CAF scheduler threads; 0: the cores the workers leave, in [2, 8]
  // Testing failure handling (--inject-fault RANK:STEP): the worker of this world rank fails its step
  // of that index (0: its first) as a failed CUDA or NCCL call would. -1: no fault.
  int64_t inject_fault_rank = -1;
  int64_t inject_fault_step = -1;
  std::function<void(const std::string&)> log;  // start-up lines (per-rank layout, KV blocks)
};

// ConfigError when --inject-fault names a rank outside a layout of at least one rank (a layout of
// none has its own message). The runtime checks it at start; a command may check it sooner.
void check_fault_injection(const RuntimeOptions& options);

struct TokenOut {
  int32_t token = 0;
  float logprob = 0.0f;
  std::vector<TokenLogprob> top;
};

// What a request's listener hears: new tokens as they are sampled, then one final event.
struct RequestEvent {
  uint64_t id = 0;
  std::vector<TokenOut> tokens;
  FinishReason finish = FinishReason::none;  // stop or length on the final event of a finished request
  bool aborted = false;                      // final event of an aborted (or failed) request
  std::string error;                         // why it failed, when it did
  int prompt_tokens = 0;
  int output_tokens = 0;
  int cached_tokens = 0;
  bool final() const { return aborted || finish != FinishReason::none; }
};

// Called on an actor thread; must not block.
using RequestListener = std::function<void(const RequestEvent&)>;

struct DataParallelStats {
  int num_blocks = 0;
  int used_blocks = 0;
  int cached_free_blocks = 0;
  double kv_usage = 0.0;
  uint64_t prefix_queries = 0;
  uint64_t prefix_hits = 0;
  int running = 0;
  int waiting = 0;
  uint64_t preemptions = 0;
  bool idle = true;  // no sequence holds a KV block
};

struct RuntimeStats {
  std::vector<DataParallelStats> dp;
  bool all_idle() const;
  uint64_t prefix_queries() const;
  uint64_t prefix_hits() const;
  uint64_t preemptions() const;
};

class Runtime {
 public:
  // Validates the layout against the model before any weight is read (ConfigError), then loads
  // every shard and builds the graph. Blocks until the model is ready.
  explicit Runtime(RuntimeOptions options);
  // Aborts what runs, stops every actor, writes the trace file. Once the engine failed, a worker may
  // never return (a GPU peer of the failed rank stays blocked in its collective): the destructor
  // then waits kAbandonAfterSeconds for the workers and, if one is still busy, abandons the runtime
  // instead of joining its thread: the actor system and what the workers use are left allocated.
  // A process with an abandoned runtime should end with std::_Exit, since threads still run.
  ~Runtime();
  static constexpr double kAbandonAfterSeconds = 2.0;
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Submits a request; the listener hears its tokens. Throws RequestError (400, fit for an HTTP
  // error body) for an empty prompt, an id outside the vocabulary, invalid sampling parameters, or
  // a prompt plus max_tokens beyond max_model_len; and RequestError (503, ServiceUnavailableError)
  // with failure() once the engine failed. The same holds for submit_text and embed.
  uint64_t submit(std::vector<int32_t> prompt, SamplingParams params, RequestListener listener);
  // Submits a text request: its request actor tokenizes it with `text` (chat template included),
  // validates it (RequestError, thrown here), then streams text events to the listener.
  uint64_t submit_text(GenerateRequest request, std::shared_ptr<const TextPipeline> text,
                       GenerateListener listener);
  // Starts the embedding actor: inputs are tokenized with `text` (token ids only when null) and
  // pooled with `pooling` ("last" or "mean"; ConfigError otherwise).
  void enable_embeddings(std::shared_ptr<const TextPipeline> text, const std::string& pooling);
  // Embeds every input of the request (prefill-only passes on the same workers); the listener gets
  // the vectors, or an error, once. Requires enable_embeddings.
  void embed(EmbedRequest request, EmbedListener listener);
  // Aborts a request (a client went away): its blocks are freed within one step. Unknown ids are
  // ignored.
  void abort(uint64_t id);

  RuntimeStats stats();
  void reset_prefix_cache();
  // Waits until no request is in flight (for tests and batch runs), at most `seconds`.
  bool wait_idle(double seconds);
  // The Prometheus page of the metrics actor.
  std::string metrics_text();
  // Requests accepted but not yet scheduled for the first time.
  int queued() const;
  // False once a worker failed. The engine is then dead: every request in flight has ended (or ends
  // within a step) with failure() as its error, and new ones are refused.
  bool healthy() const;
  // Why the engine failed ("the engine failed: worker 1: ..."); empty while healthy.
  std::string failure() const;

  const ModelConfig& model_config() const;
  int max_model_len() const;
  const std::vector<std::string>& startup_lines() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace troupe
