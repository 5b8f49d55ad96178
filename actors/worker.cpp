#include "actors/worker.hpp"

#include "actors/metrics.hpp"
#include "engine/timed_communicator.hpp"

#include <boost/json.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <string_view>

#include "config/model_config.hpp"
#include "engine/cpu_backend.hpp"
#include "engine/model_runner.hpp"
// The interface only (no CUDA in it): CPU builds keep an always-empty list of these.
#include "kernels/gpu_timed_communicator.hpp"
#ifdef TROUPE_HAVE_CUDA
#include "kernels/cuda_backend.hpp"
#include "kernels/gpu_logits_sampler.hpp"
#include "kernels/nccl_communicator.hpp"
#endif

namespace troupe {
namespace {

struct WorkerState {
  WorkerSpec spec;
  CollectiveTimes times;
  std::vector<std::unique_ptr<Communicator>> timed;  // what the model talks through
  std::vector<GpuTimedCommunicator*> gpu_timed;     // those of `timed` that time with CUDA events
  uint64_t steps = 0;
  std::unique_ptr<ModelRunner> runner;
  // Declared after the runner: destroyed before the backend they run on.
  std::vector<std::unique_ptr<Communicator>> nccl;
  std::string track;
  bool failed = false;
  // TROUPE_DUMP_ROUTING=<path>, a debugging aid for MoE router near-ties (a token whose k-th and
  // (k+1)-th router logits are almost equal, so bf16 rounding may pick another expert than a
  // reference implementation): tensor-parallel rank 0 appends one JSON line per eager step and MoE
  // layer, {"step", "rank", "layer", "top_k", "seqs", "chunk": the step's sequences and their new
  // tokens in row order, "ids": [tokens x top_k expert ids, row-major]}; with
  // TROUPE_DUMP_ROUTER_LOGITS=1 also, before it, {"step", "rank", "layer", "router_logits": [tokens x
  // experts]}. Replayed CUDA graphs report no routing (--enforce-eager for decode steps).
  // tools/router_near_ties.py and tools/layout_router_ties.py read it.
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> routing_dump{nullptr, &std::fclose};
  bool dump_router_logits = false;
  static inline const char* name = "worker";

  // Once the engine failed, a peer GPU may spin for good in a collective that waits for the failed
  // rank (the peer all-reduce kernel cannot be aborted). Tearing down here would free device and
  // pinned memory (cudaFree, cudaFreeHost), destroy streams and graphs: calls that may wait for
  // every device mapping that memory (peer access; pinned memory is mapped into every context), the
  // stuck one included, and a thread waiting inside the driver may hold up the process's exit
  // (serve and the GPU fault test _Exit once ~Runtime abandoned the stuck worker). So a GPU worker
  // of a failed engine leaves its device objects to the process's end, as every NCCL communicator
  // is left; only the stuck worker's own thread ever waits on its GPU.
  ~WorkerState() {
    if (spec.device != "cuda" || !(failed || (spec.engine_failed && spec.engine_failed()))) return;
    (void)runner.release();
    for (auto& c : nccl) (void)c.release();
    for (auto& c : timed) (void)c.release();
  }
};

std::unique_ptr<Backend> make_backend(const std::string& device, int index) {
  if (device == "cpu") return make_cpu_backend();
#ifdef TROUPE_HAVE_CUDA
  if (device == "cuda") return make_cuda_backend(index);
#endif
  (void)index;
  throw std::invalid_argument("unknown device '" + device + "'");
}

std::string describe(const Model& m, const WorkerSpec& spec) {
  std::ostringstream out;
  const ModelShard& s = m.shard();
  out << "rank " << spec.rank << " (dp" << s.dp_rank << " pp" << s.pp_rank << " tp" << s.tp_rank << "): layers ["
      << m.layers().begin << ", " << m.layers().end << "), " << m.local_heads() << " heads, " << m.local_kv_heads()
      << " kv heads";
  const ModelConfig& c = m.config();
  if (c.num_kv_heads < s.layout.tensor_parallel_size)
    out << " (replicated " << s.layout.tensor_parallel_size / c.num_kv_heads << "x)";
  if (c.is_moe()) {
    const int group = s.layout.moe_group_size();
    if (s.layout.enable_expert_parallel)
      out << ", experts [" << c.num_experts * s.moe_rank() / group << ", " << c.num_experts * (s.moe_rank() + 1) / group << ")";
    else
      out << ", all " << c.num_experts << " experts sliced 1/" << (s.layout.data_parallel_size > 1 ? group : s.layout.tensor_parallel_size);
  }
  out << ", " << m.weight_bytes() << " weight bytes";
  return out.str();
}

caf::behavior worker(caf::stateful_actor<WorkerState>* self, WorkerSpec spec) {
  self->state.spec = std::move(spec);
  const ModelShard& s = self->state.spec.shard;
  self->state.track = "worker r" + std::to_string(self->state.spec.rank) + " (dp" + std::to_string(s.dp_rank) + " pp" +
                      std::to_string(s.pp_rank) + " tp" + std::to_string(s.tp_rank) + ")";
  return {
      [=](atoms::load, const NcclSeats& seats) -> caf::result<WorkerInfo> {
        WorkerSpec& sp = self->state.spec;
        try {
          ModelConfig config = load_model_config(sp.model_dir);
          std::optional<WeightFiles> files;
          if (!sp.dummy_weights) files.emplace(WeightFiles::open(sp.model_dir));
          auto backend = make_backend(sp.device, sp.device_index);
          ShardComms comms = sp.comms;
          for ([[maybe_unused]] const NcclSeat& seat : seats) {
#ifdef TROUPE_HAVE_CUDA
            NcclUniqueId id;
            std::copy(seat.id.begin(), seat.id.end(), id.begin());
            self->state.nccl.push_back(make_nccl_communicator(*backend, id, seat.rank, seat.size, seat.peer));
            slot_of(comms, seat.slot) = self->state.nccl.back().get();
#else
            throw std::runtime_error("NCCL groups need a CUDA build");
#endif
          }
          for (Communicator** c : {&comms.tp, &comms.moe, &comms.prev, &comms.next}) {
            if (!*c) continue;
#ifdef TROUPE_HAVE_CUDA
            if (sp.device == "cuda") {
              auto timed = make_gpu_timed_communicator(**c, *backend, self->state.times);
              self->state.gpu_timed.push_back(timed.get());
              self->state.timed.push_back(std::move(timed));
              *c = self->state.timed.back().get();
              continue;
            }
#endif
            self->state.timed.push_back(std::make_unique<TimedCommunicator>(**c, self->state.times));
            *c = self->state.timed.back().get();
          }
          auto model = std::make_unique<Model>(config, files ? &*files : nullptr, *backend, sp.max_positions,
                                               LoadProgress{}, sp.shard, comms);
          WorkerInfo info{sp.rank, model->weight_bytes(), 0, -1, describe(*model, sp)};
          std::unique_ptr<LogitsSampler> sampler;
#ifdef TROUPE_HAVE_CUDA
          if (sp.device == "cuda" && model->shard().last_stage() && model->shard().tp_rank == 0)
            sampler = make_gpu_logits_sampler(*backend, config.vocab_size, 64);
#endif
          model->reserve_scratch(std::max(sp.max_batched_tokens, 256));
          auto [free, total] = backend->memory();
          if (total > 0) {
            // What is left of this process's share after the weights, less a reserve for activations
            // and logits of the largest step (vLLM profiles this; an estimate is enough to size KV).
            const int64_t used = total - free;
            const int64_t reserve = (int64_t{1} << 30) +
                                    int64_t{sp.max_batched_tokens} * (16 * config.hidden_size + 4 * config.intermediate_size) * 2 +
                                    int64_t{sp.max_seqs} * config.vocab_size * 8;
            info.kv_budget_bytes = std::max<int64_t>(0, static_cast<int64_t>(total * sp.gpu_memory_utilization) - used - reserve);
          }
          self->state.runner = std::make_unique<ModelRunner>(std::move(backend), std::move(model), std::move(sampler));
          if (const char* path = std::getenv("TROUPE_DUMP_ROUTING"); path && *path && sp.shard.tp_rank == 0) {
            self->state.routing_dump.reset(std::fopen(path, "a"));
            if (!self->state.routing_dump) throw std::runtime_error(std::string("TROUPE_DUMP_ROUTING: cannot open ") + path);
            const char* logits = std::getenv("TROUPE_DUMP_ROUTER_LOGITS");
            self->state.dump_router_logits = logits && std::string_view(logits) == "1";
          }
          info.kv_bytes_per_block = self->state.runner->kv_bytes_per_block(1);
          return info;
        } catch (const std::exception& e) {
          return caf::make_error(caf::sec::runtime_error, std::string("worker ") + std::to_string(sp.rank) + ": " + e.what());
        }
      },
      [=](atoms::allocate, int num_blocks, int block_size) {
        self->state.runner->allocate_kv_cache(num_blocks, block_size, self->state.spec.max_batched_tokens,
                                              self->state.spec.max_seqs, self->state.spec.enforce_eager);
        return num_blocks;
      },
      [=](atoms::run, const PlanPtr& plan) -> StepResult {
        WorkerState& st = self->state;
        StepResult failed;
        failed.micro_batch = plan->micro_batch;
        if (st.failed || !st.runner) {
          failed.error = "worker " + std::to_string(st.spec.rank) + " is out of service";
          return failed;
        }
        TraceRecorder* trace = st.spec.trace;
        ForwardHooks hooks;
        TraceRecorder::Clock::time_point span_start;
        if (trace) {
          hooks.span = [&, trace](const char* name, bool begin) {
            if (begin) {
              span_start = trace->now();
            } else {
              trace->span(st.track, name, span_start, trace->now(), {{"step", static_cast<int64_t>(plan->step)}});
            }
          };
        }
        std::vector<int64_t> routed;
        std::string dumped;  // this step's TROUPE_DUMP_ROUTING lines, written at once after it
        // One line of the dump: the step, the rank, the layer, then `what`.
        auto dump = [&](int layer, std::initializer_list<std::pair<boost::json::string_view, boost::json::value>> what) {
          boost::json::object line{{"step", plan->step}, {"rank", st.spec.rank}, {"layer", layer}};
          for (const auto& [key, value] : what) line[key] = value;
          dumped += boost::json::serialize(line);
          dumped += '\n';
        };
        // Tensor-parallel ranks route the same tokens: one of them reports.
        if (!st.spec.expert_shards.empty() && st.spec.shard.tp_rank == 0)
          routed.assign(st.runner->model().config().num_experts, 0);
        if (!routed.empty() || st.routing_dump) {
          const int top_k = st.runner->model().config().num_experts_per_tok;
          hooks.routing = [&, top_k](int layer, std::span<const int32_t> ids) {
            if (!routed.empty())
              for (int32_t e : ids) ++routed[e];
            if (st.routing_dump)
              dump(layer, {{"top_k", top_k},
                           {"seqs", boost::json::array(plan->seqs.begin(), plan->seqs.end())},
                           {"chunk", boost::json::array(plan->chunk.begin(), plan->chunk.end())},
                           {"ids", boost::json::array(ids.begin(), ids.end())}});
          };
        }
        if (st.routing_dump && st.dump_router_logits)
          hooks.router_logits = [&](int layer, std::span<const float> logits) {
            dump(layer, {{"router_logits", boost::json::array(logits.begin(), logits.end())}});
          };
        const auto start = trace ? trace->now() : TraceRecorder::Clock::time_point{};
        // GPU collectives: times of earlier sampled steps whose events have completed, and whether
        // this step is sampled. A sampled step runs eagerly (a replayed graph's collectives cannot
        // be timed), which costs a decode step of a 0.6B model ~2 ms over its graph: one step in
        // kGpuTimingPeriod keeps that under 1%. Every rank of a group counts the same steps, so they
        // sample the same ones.
        constexpr uint64_t kGpuTimingPeriod = 256;
        const uint64_t step_index = st.steps++;
        const bool sampled = !st.gpu_timed.empty() && step_index % kGpuTimingPeriod == 0;
        hooks.eager = sampled;
        for (GpuTimedCommunicator* c : st.gpu_timed) {
          c->collect();
          c->sample(sampled);
        }
        const auto wall_start = std::chrono::steady_clock::now();
        try {
          if (static_cast<int64_t>(step_index) == st.spec.fail_at_step)
            throw std::runtime_error("fault injected at step " + std::to_string(st.spec.fail_at_step) + " (--inject-fault)");
          if (sampled) st.gpu_timed.front()->mark_step(true);
          StepResult r = st.runner->run(*plan, hooks);
          if (sampled) {
            st.gpu_timed.front()->mark_step(false);
          } else if (st.gpu_timed.empty() && !st.timed.empty()) {
            // The CPU's collectives are timed at every step, and a step's wall time is its cost.
            st.times.add_step(std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count());
          }
          if (!routed.empty())
            for (const caf::actor& shard : st.spec.expert_shards) self->send(shard, atoms::routing::value, routed);
          if (!dumped.empty()) {
            std::fwrite(dumped.data(), 1, dumped.size(), st.routing_dump.get());
            std::fflush(st.routing_dump.get());
          }
          if (st.spec.metrics) {
            self->send(st.spec.metrics, atoms::observe::value, st.times);
            st.times = {};
            self->send(st.spec.metrics, atoms::observe::value, MailboxDepth{ActorFamily::worker, self->mailbox().size()});
          }
          if (trace)
            trace->span(st.track, "forward", start, trace->now(),
                        {{"micro_batch", static_cast<int64_t>(plan->micro_batch)},
                         {"step", static_cast<int64_t>(plan->step)},
                         {"tokens", plan->batch.num_tokens()}});
          return r;
        } catch (const std::exception& e) {
          // Peers may be waiting for this rank inside a collective: fail the groups so they return.
          st.failed = true;
          if (st.spec.abort_comms) st.spec.abort_comms(e.what());
          failed.error = "worker " + std::to_string(st.spec.rank) + ": " + e.what();
          return failed;
        }
      },
  };
}

}  // namespace

caf::actor spawn_worker(caf::actor_system& system, WorkerSpec spec) {
  return system.spawn<caf::detached>(worker, std::move(spec));
}

}  // namespace troupe
