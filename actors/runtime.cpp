#include "actors/runtime.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string_view>
#include <thread>
#include <unordered_map>

#include "actors/dp_coordinator.hpp"
#include "actors/embedding.hpp"
#include "actors/expert_shard.hpp"
#include "actors/kv_block_manager.hpp"
#include "actors/metrics.hpp"
#include "actors/pipeline_stage.hpp"
#include "actors/request.hpp"
#include "actors/router.hpp"
#include "actors/scheduler.hpp"
#include "actors/worker.hpp"
#include "config/error.hpp"
#include "config/generation_config.hpp"
#include "engine/thread_communicator.hpp"
#ifdef TROUPE_HAVE_CUDA
#include "kernels/cuda_backend.hpp"
#include "kernels/nccl_communicator.hpp"
#endif

namespace troupe {
namespace {

caf::actor_system_config& configure(caf::actor_system_config& cfg, int threads, int workers, bool gpu) {
  // By default the cores the workers' own threads leave, between 2 and 8: every request's tokens
  // pass through these threads each step (hundreds of messages per step at high concurrency, per
  // data-parallel replica).
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  if (threads <= 0) threads = std::clamp(cores - workers, 2, 8);
  // The CPU backend's workers compute on the cores themselves: the sharing policy blocks idle
  // scheduler threads on a condition variable, where work stealing would poll and take cores from
  // them. GPU workers wait for their devices instead, and a step's way back to the GPU (the workers'
  // replies, the scheduler's turn, the next plan) crosses a thread that was idle while the GPU ran:
  // woken from a condition variable, each such hop cost ~40 us on the GPU machine (a virtual one).
  // Work stealing runs a message's receiver on the sender's thread, and its idle threads poll 100000
  // times (some milliseconds) before they sleep: llama-3.1-8b at batch 1 on an H200, 150 -> 35 us
  // between a step's end and the next one's start, and 2.40 -> 2.31 ms a step at tp4
  // (docs/benchmarks.md). TROUPE_CAF_POLICY=sharing (or stealing) overrides the choice, to measure.
  // Only where every polling thread has a core beside the workers' threads.
  const char* policy = std::getenv("TROUPE_CAF_POLICY");
  const bool stealing = policy ? std::string_view(policy) == "stealing" : gpu && cores >= threads + workers;
  cfg.set("scheduler.policy", stealing ? caf::atom("stealing") : caf::atom("sharing"));
  if (stealing) cfg.set("work-stealing.aggressive-poll-attempts", size_t{100000});
  cfg.set("scheduler.max-threads", static_cast<size_t>(threads));
  cfg.set("logger.console", caf::atom("none"));
  return cfg;
}

constexpr int64_t kDefaultCpuKvBytes = int64_t{256} << 20;

}  // namespace

bool RuntimeStats::all_idle() const {
  for (const auto& d : dp)
    if (!d.idle) return false;
  return true;
}
uint64_t RuntimeStats::prefix_queries() const {
  uint64_t n = 0;
  for (const auto& d : dp) n += d.prefix_queries;
  return n;
}
uint64_t RuntimeStats::prefix_hits() const {
  uint64_t n = 0;
  for (const auto& d : dp) n += d.prefix_hits;
  return n;
}
uint64_t RuntimeStats::preemptions() const {
  uint64_t n = 0;
  for (const auto& d : dp) n += d.preemptions;
  return n;
}

struct Runtime::Impl {
  RuntimeOptions options;
  ModelConfig config;
  int max_model_len = 0;
  std::vector<std::string> startup;
  std::vector<int32_t> eos;

  // Declared before the actor system, so they outlive it and the workers that use them.
  std::unique_ptr<TraceRecorder> trace;
  std::vector<std::vector<std::unique_ptr<Communicator>>> groups;  // the CPU's thread groups
  // Every thread group's members by rank in the group (null for NCCL groups), so that a failing CPU
  // worker can fail its groups.
  std::mutex members_mutex;
  std::vector<std::vector<Communicator*>> members;
  // Used from actor threads (a scheduler's failure, a worker's exit), so declared before the system.
  mutable std::mutex failure_mutex;
  std::string failure;                      // the first failure, as requests see it
  std::vector<caf::actor> fail_schedulers;  // every rank hears of a failure; from build() to stop_all()
  std::atomic<bool> healthy{true};          // false from the first failure on; workers ask it as they exit
  // Workers not yet exited: once the engine failed, the destructor waits for them only so long.
  std::mutex exit_mutex;
  std::condition_variable exit_cv;
  int workers_running = 0;
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> system;
  std::vector<caf::actor> workers, stages, schedulers, kv_managers, expert_shards;
  caf::actor router, coordinator, embedder, metrics;

  std::mutex mutex;
  std::condition_variable idle_cv;
  std::unordered_map<SeqId, caf::actor> live;
  std::atomic<SeqId> next_id{1};
  std::atomic<int> queued{0};

  RequestSpec request_spec(SeqId id) {
    RequestSpec spec;
    spec.id = id;
    spec.router = router;
    spec.metrics = metrics;
    spec.trace = trace.get();
    spec.vocab_size = config.vocab_size;
    spec.max_model_len = max_model_len;
    spec.on_scheduled = [this](SeqId) { --queued; };
    spec.on_exit = [this](SeqId done) {
      std::lock_guard lock(mutex);
      live.erase(done);
      if (live.empty()) idle_cv.notify_all();
    };
    return spec;
  }

  // NCCL groups are not aborted: ncclCommAbort of a peer's communicator from another thread waited
  // forever on 4 × H200, so a failed GPU worker's peers are left to their own errors.
  void abort_groups(const std::vector<size_t>& which, const std::string& why) {
    std::lock_guard lock(members_mutex);
    for (size_t g : which)
      for (Communicator* c : members[g]) {
        if (!c) continue;
        abort_group(*c, why);
      }
  }

  // The first failure of any data-parallel rank kills the engine: the other ranks' steps may wait on
  // the failed one (MoE collectives across them, or stuck GPU threads), and requests routed there
  // would hang. The first is what an operator needs to see; those it causes follow it.
  void note_failure(const std::string& why) {
    std::vector<caf::actor> ranks;
    {
      std::lock_guard lock(failure_mutex);
      if (!failure.empty()) return;
      failure = why;
      ranks = fail_schedulers;
    }
    healthy = false;
    std::fprintf(stderr, "troupe: a step failed, the server is now unhealthy: %s\n", why.c_str());
    for (const caf::actor& s : ranks) caf::anon_send(s, atoms::fail::value, why);
  }

  // Throws what requests get once the engine is dead.
  void check_alive() const {
    if (healthy.load()) return;
    std::lock_guard lock(failure_mutex);
    throw RequestError(503, failure, "", "ServiceUnavailableError");
  }

  bool await_workers(double seconds) {
    std::unique_lock lock(exit_mutex);
    return exit_cv.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return workers_running == 0; });
  }

  void log(const std::string& line) {
    startup.push_back(line);
    if (options.log) options.log(line);
  }
  void build();
  void stop_all();
};

void Runtime::Impl::build() {
  const ParallelConfig& p = options.parallel;
  const int tp = p.tensor_parallel_size, pp = p.pipeline_parallel_size, dp = p.data_parallel_size;
  if (options.block_size < 1 || options.block_size > 1024)
    throw ConfigError("--block-size must be in [1, 1024], got " + std::to_string(options.block_size));
  for (const std::string& w : validate_parallel_config(p, config)) log("warning: " + w);
  check_fault_injection(options);
  GenerationConfig generation = load_generation_config(options.model_dir);
  eos.assign(generation.eos_token_ids.begin(), generation.eos_token_ids.end());
  if (eos.empty()) eos.assign(config.eos_token_ids.begin(), config.eos_token_ids.end());

  // The device: a GPU per worker when there are enough, else (auto) the CPU.
  const int world = p.world_size();
  int gpus = 0;
#ifdef TROUPE_HAVE_CUDA
  gpus = cuda_device_count();
#endif
  std::string device = options.device;
  if (device == "auto") device = gpus > 0 ? "cuda" : "cpu";
  if (device == "cuda" && gpus < world)
    throw ConfigError("the layout " + p.name() + " needs " + std::to_string(world) + " GPUs; " +
                      std::to_string(gpus) + " are visible");
  if (options.load_format != "auto" && options.load_format != "dummy")
    throw ConfigError("--load-format: expected auto or dummy, got '" + options.load_format + "'");
  system = std::make_unique<caf::actor_system>(configure(cfg, options.actor_threads, p.world_size(), device == "cuda"));
  if (!options.trace_file.empty()) trace = std::make_unique<TraceRecorder>();
  std::string model_name = options.model_name;
  if (model_name.empty()) model_name = (std::filesystem::absolute(options.model_dir) / "").parent_path().filename().string();
  metrics = spawn_metrics(*system, model_name);

  log("device " + device + (device == "cuda" ? " (" + std::to_string(gpus) + " visible)" : ""));
  if (options.inject_fault_rank >= 0)
    log("warning: --inject-fault: rank " + std::to_string(options.inject_fault_rank) + " fails its step " +
        std::to_string(options.inject_fault_step));

  // Communicator groups: tensor-parallel groups, each stage's MoE group across data-parallel ranks,
  // and neighbouring stages' pairs. On the CPU a group is threads of this process; on GPUs an NCCL
  // communicator per member, which each worker makes from the group's id in its load message.
  using Slot = NcclSeat::Slot;
  struct Group {
    std::vector<int> ranks;
    std::vector<Slot> slots;
  };
  std::vector<Group> defs;
  for (int d = 0; d < dp; ++d)
    for (int s = 0; s < pp && tp > 1; ++s) {
      Group g;
      for (int t = 0; t < tp; ++t) g.ranks.push_back(p.rank(d, s, t));
      g.slots.assign(tp, Slot::tp);
      defs.push_back(std::move(g));
    }
  const bool moe_across_dp = config.is_moe() && dp > 1;
  for (int s = 0; s < pp && moe_across_dp; ++s) {
    Group g;
    for (int d = 0; d < dp; ++d)
      for (int t = 0; t < tp; ++t) g.ranks.push_back(p.rank(d, s, t));
    g.slots.assign(g.ranks.size(), Slot::moe);
    defs.push_back(std::move(g));
  }
  for (int d = 0; d < dp; ++d)
    for (int s = 0; s + 1 < pp; ++s)
      for (int t = 0; t < tp; ++t) defs.push_back({{p.rank(d, s, t), p.rank(d, s + 1, t)}, {Slot::next, Slot::prev}});

  std::vector<ShardComms> comms(world);
  std::vector<NcclSeats> seats(world);
  std::vector<std::vector<size_t>> groups_of(world);
  members.resize(defs.size());
  for (size_t g = 0; g < defs.size(); ++g) {
    const Group& def = defs[g];
    const int n = static_cast<int>(def.ranks.size());
    members[g].assign(n, nullptr);
    for (int r : def.ranks) groups_of[r].push_back(g);
#ifdef TROUPE_HAVE_CUDA
    if (device == "cuda") {
      const NcclUniqueId id = make_nccl_unique_id();
      std::shared_ptr<cuda::PeerAllReduceGroup> peer;
      if (def.slots.front() == Slot::tp && !options.disable_custom_all_reduce) {
        std::vector<int> devices;
        for (int r : def.ranks) devices.push_back(r % gpus);
        std::string why;
        peer = make_peer_all_reduce_group(devices, &why);
        if (!peer && g == 0) log("peer all-reduce off (NCCL alone): " + why);
      }
      for (int i = 0; i < n; ++i) {
        NcclSeat seat{def.slots[i], {}, i, n, peer};
        std::copy(id.begin(), id.end(), seat.id.begin());
        seats[def.ranks[i]].push_back(seat);
      }
      continue;
    }
#endif
    groups.push_back(make_thread_group(n));
    for (int i = 0; i < n; ++i) {
      Communicator* c = groups.back()[i].get();
      members[g][i] = c;
      slot_of(comms[def.ranks[i]], def.slots[i]) = c;
    }
  }

  // Expert shards, one per expert-parallel rank of each stage.
  std::vector<std::vector<caf::actor>> stage_shards(pp);
  if (config.is_moe() && p.enable_expert_parallel) {
    for (int s = 0; s < pp; ++s)
      for (int r = 0; r < p.moe_group_size(); ++r) {
        auto [b, e] = expert_range(config.num_experts, p.moe_group_size(), r);
        stage_shards[s].push_back(spawn_expert_shard(*system, {s, r, b, e, metrics}));
        expert_shards.push_back(stage_shards[s].back());
      }
  }

  // Workers: load every shard at once (members of an NCCL group join it together), then size the
  // KV cache.
  const int wanted_len = options.max_model_len > 0 ? options.max_model_len : config.max_position_embeddings;
  for (int d = 0; d < dp; ++d)
    for (int s = 0; s < pp; ++s)
      for (int t = 0; t < tp; ++t) {
        const int r = p.rank(d, s, t);
        WorkerSpec spec;
        spec.rank = r;
        spec.shard = {p, t, s, d, options.moe_exchange};
        spec.comms = comms[r];
        spec.abort_comms = [this, mine = groups_of[r]](const std::string& why) { abort_groups(mine, why); };
        spec.engine_failed = [this] { return !healthy.load(); };
        spec.model_dir = options.model_dir;
        spec.device = device;
        spec.device_index = gpus > 0 ? r % gpus : 0;
        spec.dummy_weights = options.load_format == "dummy";
        spec.enforce_eager = options.enforce_eager;
        spec.gpu_memory_utilization = options.gpu_memory_utilization;
        spec.max_batched_tokens = options.max_num_batched_tokens;
        spec.max_seqs = options.max_num_seqs;
        spec.max_positions = wanted_len;
        spec.trace = trace.get();
        spec.expert_shards = stage_shards[s];
        spec.metrics = metrics;
        spec.fail_at_step = r == options.inject_fault_rank ? options.inject_fault_step : -1;
        workers.push_back(spawn_worker(*system, std::move(spec)));
        {
          std::lock_guard lock(exit_mutex);
          ++workers_running;
        }
        workers.back()->attach_functor([this] {
          std::lock_guard lock(exit_mutex);
          --workers_running;
          exit_cv.notify_all();
        });
      }
  std::vector<WorkerInfo> infos(world);
  std::string failure;
  {
    caf::scoped_actor loader{*system};
    std::vector<decltype(loader->request(workers[0], caf::infinite, atoms::load::value, seats[0]))> loads;
    for (int r = 0; r < world; ++r) loads.push_back(loader->request(workers[r], caf::infinite, atoms::load::value, seats[r]));
    for (int r = 0; r < world; ++r) {
      loads[r].receive([&](WorkerInfo& info) { infos[r] = std::move(info); },
                       [&](caf::error& e) {
                         if (failure.empty()) failure = system->render(e);
                         // Members of its groups wait for it: fail them.
                         abort_groups(groups_of[r], failure);
                       });
    }
    for (int r = 0; r < world && failure.empty(); ++r) log(infos[r].description);
  }
  if (!failure.empty()) {
    // The scoped actor above is gone: awaiting counts only the runtime's own actors.
    stop_all();
    system->await_all_actors_done();
    throw std::runtime_error(failure);
  }
  caf::scoped_actor self{*system};

  // One block count per data-parallel rank: the most that every worker of the replica can hold.
  std::vector<int> blocks(dp);
  for (int d = 0; d < dp; ++d) {
    int64_t n = INT32_MAX;
    for (int s = 0; s < pp; ++s)
      for (int t = 0; t < tp; ++t) {
        const WorkerInfo& info = infos[p.rank(d, s, t)];
        const int64_t per_block = info.kv_bytes_per_block * options.block_size;
        const int64_t budget = options.kv_cache_memory > 0 ? options.kv_cache_memory
                               : info.kv_budget_bytes >= 0 ? info.kv_budget_bytes
                                                           : kDefaultCpuKvBytes;
        n = std::min<int64_t>(n, per_block > 0 ? budget / per_block : INT32_MAX);
      }
    blocks[d] = options.num_blocks_override > 0 ? options.num_blocks_override : static_cast<int>(n);
    if (blocks[d] < 1) throw ConfigError("the KV cache budget holds no block; raise --kv-cache-memory");
  }
  const int capacity = *std::min_element(blocks.begin(), blocks.end()) * options.block_size;
  if (options.max_model_len > 0 && options.max_model_len > capacity)
    throw ConfigError("--max-model-len (" + std::to_string(options.max_model_len) + ") exceeds the " +
                      std::to_string(capacity) + " tokens the KV cache holds; lower it or give the cache more memory");
  max_model_len = std::min(wanted_len, capacity);
  // All at once: each worker captures its decode graphs here, and the warm-up runs of a group's
  // members join their collectives.
  {
    std::vector<decltype(self->request(workers[0], caf::infinite, atoms::allocate::value, 0, 0))> allocations;
    for (int r = 0; r < world; ++r)
      allocations.push_back(self->request(workers[r], caf::infinite, atoms::allocate::value,
                                          blocks[r / (pp * tp)], options.block_size));
    std::string failed;
    for (auto& a : allocations)
      a.receive([](int) {}, [&](caf::error& e) {
        if (failed.empty()) failed = system->render(e);
      });
    if (!failed.empty()) throw std::runtime_error(failed);
  }
  for (int d = 0; d < dp; ++d)
    log("dp" + std::to_string(d) + ": " + std::to_string(blocks[d]) + " KV blocks of " +
        std::to_string(options.block_size) + " tokens per worker");
  log("layout " + p.name() + ", max model length " + std::to_string(max_model_len));

  // The control plane: block managers, schedulers, pipeline stages (last to first), the router.
  SchedulerConfig sc;
  sc.max_num_seqs = options.max_num_seqs;
  sc.max_num_batched_tokens = options.max_num_batched_tokens;
  sc.max_model_len = max_model_len;
  sc.block_size = options.block_size;
  sc.prefix_caching = options.enable_prefix_caching;
  sc.eos_token_ids = eos;
  std::vector<caf::actor> first_stages(dp);
  for (int d = 0; d < dp; ++d) {
    kv_managers.push_back(
        spawn_kv_block_manager(*system, d, blocks[d], options.block_size, options.enable_prefix_caching, metrics));
    SchedulerSpec spec;
    spec.dp_rank = d;
    spec.max_in_flight = pp;
    spec.config = sc;
    spec.kv_manager = kv_managers.back();
    spec.trace = trace.get();
    spec.on_failure = [this](const std::string& why) { note_failure(why); };
    spec.metrics = metrics;
    schedulers.push_back(spawn_scheduler(*system, spec));
    caf::actor next;
    for (int s = pp - 1; s >= 0; --s) {
      StageSpec st;
      st.dp_rank = d;
      st.pp_rank = s;
      for (int t = 0; t < tp; ++t) st.workers.push_back(workers[p.rank(d, s, t)]);
      st.next = next;
      st.scheduler = schedulers.back();
      st.trace = trace.get();
      st.metrics = metrics;
      next = spawn_pipeline_stage(*system, std::move(st));
      stages.push_back(next);
    }
    first_stages[d] = next;
  }
  if (moe_across_dp) coordinator = spawn_dp_coordinator(*system, {schedulers, first_stages, pp});
  for (int d = 0; d < dp; ++d) self->send(schedulers[d], atoms::plan::value, first_stages[d], coordinator);
  router = spawn_router(*system, schedulers, options.block_size);
  std::lock_guard lock(failure_mutex);
  fail_schedulers = schedulers;
}

void Runtime::Impl::stop_all() {
  if (!system) return;
  caf::scoped_actor self{*system};
  auto stop = [&](std::vector<caf::actor>& actors) {
    for (auto& a : actors) self->send_exit(a, caf::exit_reason::user_shutdown);
    actors.clear();
  };
  {
    std::lock_guard lock(mutex);
    for (auto& [id, a] : live) self->send_exit(a, caf::exit_reason::user_shutdown);
    live.clear();
  }
  {
    std::lock_guard lock(failure_mutex);
    fail_schedulers.clear();
  }
  if (router) self->send_exit(router, caf::exit_reason::user_shutdown);
  if (embedder) self->send_exit(embedder, caf::exit_reason::user_shutdown);
  if (metrics) self->send_exit(metrics, caf::exit_reason::user_shutdown);
  if (coordinator) self->send_exit(coordinator, caf::exit_reason::user_shutdown);
  stop(schedulers);
  stop(stages);
  stop(kv_managers);
  stop(expert_shards);
  // A CPU worker blocked in a collective is released by failing its groups. A GPU worker whose step
  // waits on a collective of a failed peer (its host in a stream synchronisation) is released by
  // nothing: the destructor abandons it. Its communicators are left to the process's end
  // (kernels/nccl_communicator.cpp says why), and so, once the engine failed, is every GPU worker's
  // device state (WorkerState in worker.cpp says why).
  for (auto& g : groups)
    for (auto& c : g) abort_group(*c, "the runtime is shutting down");
  stop(workers);
}

void check_fault_injection(const RuntimeOptions& options) {
  const int64_t world = options.parallel.world_size();
  if (world > 0 && options.inject_fault_rank >= world)
    throw ConfigError("--inject-fault: rank " + std::to_string(options.inject_fault_rank) + " is not one of the " +
                      std::to_string(world) + " ranks of the layout (tensor x pipeline x data parallel size)");
}

Runtime::Runtime(RuntimeOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  impl_->config = load_model_config(impl_->options.model_dir);
  impl_->build();
}

Runtime::~Runtime() {
  impl_->stop_all();
  if (!impl_->healthy && !impl_->await_workers(kAbandonAfterSeconds)) {
    std::fprintf(stderr, "troupe: a worker of the failed engine does not return; its threads are left running\n");
    if (impl_->trace) impl_->trace->write(impl_->options.trace_file);
    // Joining it would wait forever: what its thread touches stays allocated.
    (void)impl_.release();
    return;
  }
  impl_->system->await_all_actors_done();
  if (impl_->trace) impl_->trace->write(impl_->options.trace_file);
}

uint64_t Runtime::submit(std::vector<int32_t> prompt, SamplingParams params, RequestListener listener) {
  Impl& im = *impl_;
  im.check_alive();
  validate_request(prompt, params, im.config.vocab_size, im.max_model_len);
  const SeqId id = im.next_id++;
  RequestSpec spec = im.request_spec(id);
  spec.prompt = std::move(prompt);
  spec.params = std::move(params);
  spec.listener = std::move(listener);
  ++im.queued;
  std::lock_guard lock(im.mutex);
  im.live[id] = spawn_request(*im.system, std::move(spec));
  return id;
}

uint64_t Runtime::submit_text(GenerateRequest request, std::shared_ptr<const TextPipeline> text, GenerateListener listener) {
  Impl& im = *impl_;
  im.check_alive();
  const SeqId id = im.next_id++;
  RequestSpec spec = im.request_spec(id);
  spec.text = std::move(text);
  spec.generate = std::move(request);
  spec.text_listener = std::move(listener);
  spec.accepted = std::make_shared<std::promise<void>>();
  std::future<void> accepted = spec.accepted->get_future();
  ++im.queued;
  {
    std::lock_guard lock(im.mutex);
    im.live[id] = spawn_request(*im.system, std::move(spec));
  }
  try {
    accepted.get();
  } catch (...) {
    --im.queued;
    throw;
  }
  return id;
}

void Runtime::enable_embeddings(std::shared_ptr<const TextPipeline> text, const std::string& pooling) {
  Impl& im = *impl_;
  if (pooling != "last" && pooling != "mean") throw ConfigError("--pooling: expected last or mean, got '" + pooling + "'");
  EmbeddingSpec spec;
  spec.router = im.router;
  spec.text = std::move(text);
  spec.pooling = pooling == "mean" ? Pooling::mean : Pooling::last;
  spec.vocab_size = im.config.vocab_size;
  spec.max_model_len = im.max_model_len;
  spec.next_id = &im.next_id;
  im.embedder = spawn_embedding(*im.system, std::move(spec));
}

void Runtime::embed(EmbedRequest request, EmbedListener listener) {
  if (!impl_->embedder) throw std::logic_error("Runtime::embed before enable_embeddings");
  impl_->check_alive();
  caf::anon_send(impl_->embedder, atoms::submit::value, EmbedJob{std::move(request), std::move(listener)});
}

std::string Runtime::metrics_text() {
  caf::scoped_actor self{*impl_->system};
  std::string page;
  self->request(impl_->metrics, caf::infinite, atoms::snapshot::value)
      .receive([&](std::string& text) { page = std::move(text); }, [](caf::error&) {});
  return page;
}

int Runtime::queued() const { return impl_->queued.load(); }
bool Runtime::healthy() const { return impl_->healthy.load(); }
std::string Runtime::failure() const {
  std::lock_guard lock(impl_->failure_mutex);
  return impl_->failure;
}

void Runtime::abort(uint64_t id) {
  caf::actor target;
  {
    std::lock_guard lock(impl_->mutex);
    auto it = impl_->live.find(id);
    if (it == impl_->live.end()) return;
    target = it->second;
  }
  caf::anon_send(target, atoms::abort::value);
}

bool Runtime::wait_idle(double seconds) {
  std::unique_lock lock(impl_->mutex);
  return impl_->idle_cv.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return impl_->live.empty(); });
}

RuntimeStats Runtime::stats() {
  Impl& im = *impl_;
  caf::scoped_actor self{*im.system};
  RuntimeStats out;
  for (size_t d = 0; d < im.schedulers.size(); ++d) {
    DataParallelStats s;
    self->request(im.kv_managers[d], caf::infinite, atoms::stats::value)
        .receive(
            [&](BlockManagerStats& b) {
              s.num_blocks = b.num_blocks;
              s.used_blocks = b.used_blocks;
              s.cached_free_blocks = b.cached_free_blocks;
              s.kv_usage = b.num_blocks ? static_cast<double>(b.used_blocks) / b.num_blocks : 0.0;
              s.prefix_queries = b.prefix_queries;
              s.prefix_hits = b.prefix_hits;
            },
            [](caf::error&) {});
    self->request(im.kv_managers[d], caf::infinite, atoms::snapshot::value).receive([&](bool idle) { s.idle = idle; }, [](caf::error&) {});
    self->request(im.schedulers[d], caf::infinite, atoms::stats::value)
        .receive(
            [&](SchedulerStats& st) {
              s.running = st.running;
              s.waiting = st.waiting;
              s.preemptions = st.preemptions;
            },
            [](caf::error&) {});
    out.dp.push_back(s);
  }
  return out;
}

void Runtime::reset_prefix_cache() {
  caf::scoped_actor self{*impl_->system};
  for (auto& kv : impl_->kv_managers)
    self->request(kv, caf::infinite, atoms::reset::value).receive([](bool) {}, [](caf::error&) {});
}

const ModelConfig& Runtime::model_config() const { return impl_->config; }
int Runtime::max_model_len() const { return impl_->max_model_len; }
const std::vector<std::string>& Runtime::startup_lines() const { return impl_->startup; }

}  // namespace troupe
