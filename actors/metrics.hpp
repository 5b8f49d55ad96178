// The metrics actor: one per server. The other actors tell it what happened, each with one
//   send(metrics, atoms::observe::value, Event{...});
// and it keeps vLLM's metrics (named as vLLM names them, under `troupe:`) plus troupe's own, as a
// Prometheus page for /metrics. Nothing on the per-token path sends here: a request reports once,
// when it ends (its inter-token gaps travel in that one message), and everything else once per step
// or micro-batch.
//
// Who sends what:
//   RequestMetrics    request actor, once when the request ends (finished, aborted or failed)
//   SchedulerMetrics  scheduler[dp], once per completed micro-batch
//   KvMetrics         kv_block_manager[dp], once per admission (i.e. per step)
//   StageMetrics      pipeline_stage[dp][stage], once per micro-batch it finishes
//   CollectiveMetrics gpu_worker, once per step it ran
//   ExpertMetrics     expert_shard, once per step with routing counts
//   MailboxDepth      any actor, sampled now and then (e.g. once per step)
//
// Protocol: (observe, <one of the events above>); (snapshot) -> std::string, the page.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "actors/atoms.hpp"
#include "actors/metrics_registry.hpp"
#include "engine/block_manager.hpp"
#include "engine/sampler.hpp"
#include "engine/timed_communicator.hpp"

namespace troupe {

using MetricsClock = std::chrono::steady_clock;

// vLLM's `finished_reason` label values (plus `error`, a step that failed on a worker).
enum class FinishedReason : uint8_t { stop, length, abort, error };

// The label a request ends with, from what its last SequenceUpdate said.
inline FinishedReason finished_reason(FinishReason finish, bool aborted, bool failed) {
  if (failed) return FinishedReason::error;
  if (aborted) return FinishedReason::abort;
  return finish == FinishReason::length ? FinishedReason::length : FinishedReason::stop;
}

// The whole life of one request. Times are steady-clock points; an unset optional means the
// request never got that far (an abort while waiting has no `scheduled`), and the histograms that
// need it are left alone. Feeds TTFT (first_token - arrival), e2e (finished - arrival), queue
// (scheduled - arrival), prefill (first_token - scheduled), decode (last_token - first_token),
// inter-token latency, prompt and generation lengths, and request_success_total{finished_reason}.
struct RequestMetrics {
  MetricsClock::time_point arrival;                       // the server accepted the request
  std::optional<MetricsClock::time_point> scheduled;      // first left the waiting queue
  std::optional<MetricsClock::time_point> first_token;    // first output token reached the request
  std::optional<MetricsClock::time_point> last_token;     // last output token reached the request
  MetricsClock::time_point finished;                      // the request ended
  int prompt_tokens = 0;
  int generation_tokens = 0;
  FinishedReason reason = FinishedReason::stop;
  // One entry per step that brought the request tokens after its first: the gap since the previous
  // such step, as vLLM observes inter-token latency.
  std::vector<float> inter_token_seconds;
};

// One data-parallel rank's scheduler after a completed micro-batch.
struct SchedulerMetrics {
  int dp = 0;
  int running = 0;
  int waiting = 0;
  uint64_t preemptions = 0;   // total since the scheduler started (Scheduler::num_preemptions())
  int scheduled_tokens = 0;   // tokens the micro-batch computed (Σ plan.chunk): iteration_tokens_total
  int prompt_tokens = 0;      // prompt lengths of sequences whose first token came in this micro-batch
  int generation_tokens = 0;  // tokens sampled in this micro-batch
};

// One data-parallel rank's KV block manager: BlockManager::stats() as it is. Its prefix counts are
// totals since the manager started, not deltas, so a sender keeps no bookkeeping and a lost or
// repeated message cannot skew the counters; a total that goes down is taken as a restart.
struct KvMetrics {
  int dp = 0;
  BlockManagerStats stats;
};

// One pipeline stage's wall time for one micro-batch (empty batches of data-parallel ranks that
// step together included: they occupy the stage too).
struct StageMetrics {
  int dp = 0;
  int stage = 0;
  double seconds = 0.0;
};

// One worker's report after a step: the times its communicators took since the last report, as
// engine/timed_communicator.hpp keeps them. A kind with no calls is not observed.
using CollectiveMetrics = CollectiveTimes;

// Tokens routed to the experts first_expert, first_expert + 1, ... of one pipeline stage in one step,
// summed over the stage's MoE layers; a token counts once for each expert it goes to (top-k).
struct ExpertMetrics {
  int stage = 0;
  int first_expert = 0;
  std::vector<int64_t> tokens;
};

enum class ActorFamily : uint8_t {
  request, router, scheduler, kv_block_manager, pipeline_stage, worker, expert_shard, dp_coordinator
};
inline constexpr size_t kNumActorFamilies = 8;

// A sample of the sender's own mailbox: MailboxDepth{family, self->mailbox().size()}. The metrics
// actor keeps each sender's latest sample until the sender exits; the family's gauge is the deepest
// of them, because a backlog in one scheduler matters even when the others are idle.
struct MailboxDepth {
  ActorFamily family = ActorFamily::request;
  uint64_t depth = 0;
};

// The label values these enums render as.
const char* label_value(FinishedReason reason);
const char* label_value(Collective kind);
const char* label_value(ActorFamily family);

// What the actor does with each event, as a plain class (the actor only forwards to it).
class MetricsState {
 public:
  explicit MetricsState(std::string model_name);
  MetricsState(const MetricsState&) = delete;
  MetricsState& operator=(const MetricsState&) = delete;

  void observe(const RequestMetrics& m);
  void observe(const SchedulerMetrics& m);
  void observe(const KvMetrics& m);
  void observe(const StageMetrics& m);
  void observe(const CollectiveMetrics& m);
  void observe(const ExpertMetrics& m);
  // `actor` identifies the sender (0 for an anonymous one). Returns true when the sender is new, so
  // that the caller can watch it and call forget() once it exits.
  bool observe(const MailboxDepth& m, uint64_t actor);
  void forget(uint64_t actor);

  std::string render() const { return registry_.render(); }

 private:
  // A data-parallel rank's series, looked up once, and the last totals its senders reported.
  struct Rank {
    Gauge* running;
    Gauge* waiting;
    Gauge* kv_usage;
    Gauge* kv_blocks;
    Counter* prefix_queries;
    Counter* prefix_hits;
    Counter* preemptions;
    Counter* prompt_tokens;
    Counter* generation_tokens;
    Histogram* iteration_tokens;
    uint64_t last_preemptions = 0;
    uint64_t last_prefix_queries = 0;
    uint64_t last_prefix_hits = 0;
  };
  Rank& rank(int dp);
  void set_mailbox_gauge(ActorFamily family);

  std::string model_;
  MetricsRegistry registry_;

  GaugeFamily& running_;
  GaugeFamily& waiting_;
  GaugeFamily& kv_usage_;
  CounterFamily& prefix_queries_;
  CounterFamily& prefix_hits_;
  CounterFamily& preemptions_;
  CounterFamily& prompt_tokens_;
  CounterFamily& generation_tokens_;
  CounterFamily& request_success_;
  HistogramFamily& ttft_;
  HistogramFamily& itl_;
  HistogramFamily& e2e_;
  HistogramFamily& queue_;
  HistogramFamily& prefill_;
  HistogramFamily& decode_;
  HistogramFamily& request_prompt_tokens_;
  HistogramFamily& request_generation_tokens_;
  HistogramFamily& iteration_tokens_;
  GaugeFamily& kv_blocks_;
  HistogramFamily& stage_seconds_;
  HistogramFamily& collective_seconds_;
  HistogramFamily& timed_step_seconds_;
  GaugeFamily& mailbox_depth_;
  CounterFamily& expert_tokens_;

  std::map<int, Rank> ranks_;
  std::map<std::pair<int, int>, Histogram*> stages_;
  std::array<Histogram*, kNumCollectiveKinds> collectives_{};
  Histogram* timed_steps_ = nullptr;
  std::map<int, std::vector<Counter*>> experts_;  // per stage, indexed by expert id
  // Latest mailbox sample per sender, and per family the multiset of them (its max is the gauge).
  std::unordered_map<uint64_t, std::pair<ActorFamily, uint64_t>> mailboxes_;
  std::array<std::multiset<uint64_t>, kNumActorFamilies> depths_;
};

caf::actor spawn_metrics(caf::actor_system& system, std::string model_name);

}  // namespace troupe

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::RequestMetrics)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::SchedulerMetrics)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::KvMetrics)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::StageMetrics)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::CollectiveMetrics)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::ExpertMetrics)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::MailboxDepth)
