#include "actors/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <memory>

namespace troupe {
namespace {

// vLLM's bucket bounds (vllm/v1/metrics/loggers.py), so that dashboards and quantiles built for
// vLLM read the same on troupe.
const std::vector<double> kTtftBounds = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                                         1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
const std::vector<double> kItlBounds = {0.01, 0.025, 0.05, 0.075, 0.1,  0.15, 0.2,  0.3,  0.4, 0.5,
                                        0.75, 1.0,   2.5,  5.0,   7.5,  10.0, 20.0, 40.0, 80.0};
const std::vector<double> kRequestLatencyBounds = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                                   5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
// vLLM bounds request lengths by 1-2-5 steps up to max_model_len; without the model's context here,
// the steps go to a million tokens, past every context length we serve.
const std::vector<double> kRequestTokenBounds = {1,    2,    5,     10,    20,    50,     100,    200,    500,   1000,
                                                 2000, 5000, 10000, 20000, 50000, 100000, 200000, 500000, 1000000};
const std::vector<double> kIterationTokenBounds = {1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384};
// A stage's micro-batch: from a 1-layer decode on an H100 (~100 µs) to a long CPU-backend prefill.
const std::vector<double> kStageBounds = {0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02,
                                          0.05,   0.1,    0.2,    0.5,   1.0,   2.0,   5.0,  10.0};
// A step's collectives of one kind: one graph-captured NCCL all-reduce is ~13 µs on NVLink, a step of
// an 8B model makes 64 of them (~1 ms); the CPU backend's thread communicator is far slower.
const std::vector<double> kCollectiveBounds = {0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001,
                                               0.002,   0.005,   0.01,    0.02,   0.05,   0.1,    0.2,
                                               0.5,     1.0,     2.0,     5.0,    10.0};

constexpr FinishedReason kFinishedReasons[] = {FinishedReason::stop, FinishedReason::length, FinishedReason::abort,
                                               FinishedReason::error};

double seconds_between(MetricsClock::time_point from, MetricsClock::time_point to) {
  return std::max(0.0, std::chrono::duration<double>(to - from).count());
}

// The increase of a total a sender reports, remembering it; a smaller total means the sender started
// over, and all of it is new.
uint64_t advance(uint64_t& last, uint64_t total) {
  const uint64_t delta = total >= last ? total - last : total;
  last = total;
  return delta;
}

}  // namespace

const char* label_value(FinishedReason reason) {
  switch (reason) {
    case FinishedReason::stop: return "stop";
    case FinishedReason::length: return "length";
    case FinishedReason::abort: return "abort";
    case FinishedReason::error: return "error";
  }
  return "unknown";
}

const char* label_value(Collective kind) {
  switch (kind) {
    case Collective::all_reduce: return "all_reduce";
    case Collective::all_gather: return "all_gather";
    case Collective::reduce_scatter: return "reduce_scatter";
    case Collective::all_to_all: return "all_to_all";
    case Collective::send_recv: return "send_recv";
  }
  return "unknown";
}

const char* label_value(ActorFamily family) {
  switch (family) {
    case ActorFamily::request: return "request";
    case ActorFamily::router: return "router";
    case ActorFamily::scheduler: return "scheduler";
    case ActorFamily::kv_block_manager: return "kv_block_manager";
    case ActorFamily::pipeline_stage: return "pipeline_stage";
    case ActorFamily::worker: return "worker";
    case ActorFamily::expert_shard: return "expert_shard";
    case ActorFamily::dp_coordinator: return "dp_coordinator";
  }
  return "unknown";
}

MetricsState::MetricsState(std::string model_name)
    : model_(std::move(model_name)),
      running_(registry_.gauge("troupe:num_requests_running", "Number of requests in the running batch.",
                               {"model_name", "dp"})),
      waiting_(registry_.gauge("troupe:num_requests_waiting", "Number of requests waiting to be scheduled.",
                               {"model_name", "dp"})),
      kv_usage_(registry_.gauge("troupe:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = 100%).",
                                {"model_name", "dp"})),
      prefix_queries_(registry_.counter("troupe:prefix_cache_queries_total",
                                        "Prefix-cache lookups, counted in prompt tokens.", {"model_name", "dp"})),
      prefix_hits_(registry_.counter("troupe:prefix_cache_hits_total",
                                     "Prefix-cache hits, counted in prompt tokens.", {"model_name", "dp"})),
      preemptions_(registry_.counter("troupe:num_preemptions_total",
                                     "Preemptions (a running sequence gave its KV blocks back and recomputes).",
                                     {"model_name", "dp"})),
      prompt_tokens_(registry_.counter("troupe:prompt_tokens_total",
                                       "Prompt tokens, counted when a request produces its first token.",
                                       {"model_name", "dp"})),
      generation_tokens_(registry_.counter("troupe:generation_tokens_total", "Generated tokens.",
                                           {"model_name", "dp"})),
      request_success_(registry_.counter("troupe:request_success_total", "Finished requests by finish reason.",
                                         {"model_name", "finished_reason"})),
      ttft_(registry_.histogram("troupe:time_to_first_token_seconds",
                                "Time from arrival at the server to the first output token, in seconds.",
                                {"model_name"}, kTtftBounds)),
      itl_(registry_.histogram("troupe:inter_token_latency_seconds",
                               "Gap between consecutive output tokens of a request, in seconds.", {"model_name"},
                               kItlBounds)),
      e2e_(registry_.histogram("troupe:e2e_request_latency_seconds",
                               "Time from arrival at the server to the end of the request, in seconds.",
                               {"model_name"}, kRequestLatencyBounds)),
      queue_(registry_.histogram("troupe:request_queue_time_seconds",
                                 "Time from arrival to first being scheduled, in seconds.", {"model_name"},
                                 kRequestLatencyBounds)),
      prefill_(registry_.histogram("troupe:request_prefill_time_seconds",
                                   "Time from first being scheduled to the first output token, in seconds.",
                                   {"model_name"}, kRequestLatencyBounds)),
      decode_(registry_.histogram("troupe:request_decode_time_seconds",
                                  "Time from the first to the last output token, in seconds.", {"model_name"},
                                  kRequestLatencyBounds)),
      request_prompt_tokens_(registry_.histogram("troupe:request_prompt_tokens",
                                                 "Prompt length of a request, in tokens.", {"model_name"},
                                                 kRequestTokenBounds)),
      request_generation_tokens_(registry_.histogram("troupe:request_generation_tokens",
                                                     "Tokens generated for a request.", {"model_name"},
                                                     kRequestTokenBounds)),
      iteration_tokens_(registry_.histogram("troupe:iteration_tokens_total",
                                            "Tokens computed by one micro-batch (an engine step).",
                                            {"model_name", "dp"}, kIterationTokenBounds)),
      kv_blocks_(registry_.gauge("troupe:kv_cache_blocks",
                                 "KV-cache blocks of each worker of a data-parallel rank.", {"model_name", "dp"})),
      stage_seconds_(registry_.histogram("troupe:pipeline_stage_step_seconds",
                                         "Wall time of one micro-batch in one pipeline stage, in seconds.",
                                         {"model_name", "dp", "stage"}, kStageBounds)),
      collective_seconds_(registry_.histogram(
          "troupe:collective_seconds", "Time one worker spent in collectives of a kind during one step, in seconds.",
          {"model_name", "kind"}, kCollectiveBounds)),
      timed_step_seconds_(registry_.histogram(
          "troupe:timed_step_seconds",
          "Time of one worker's step whose collectives troupe:collective_seconds timed (on a GPU: one "
          "step in 256, run without its graph), in seconds: the denominator of communication's share.",
          {"model_name"}, kStageBounds)),
      mailbox_depth_(registry_.gauge("troupe:actor_mailbox_depth",
                                     "Deepest mailbox among the live actors of a family, at their latest samples.",
                                     {"model_name", "family"})),
      expert_tokens_(registry_.counter(
          "troupe:expert_tokens_total",
          "Tokens routed to an expert, once per expert a token goes to, summed over the stage's MoE layers.",
          {"model_name", "stage", "expert"})) {
  // Series that need no rank or stage exist from the start, so that rate() sees their first
  // increase and a dashboard shows zeros rather than gaps.
  for (FinishedReason r : kFinishedReasons) request_success_.with({model_, label_value(r)});
  for (HistogramFamily* f : {&ttft_, &itl_, &e2e_, &queue_, &prefill_, &decode_, &request_prompt_tokens_,
                             &request_generation_tokens_})
    f->with({model_});
}

MetricsState::Rank& MetricsState::rank(int dp) {
  auto it = ranks_.find(dp);
  if (it != ranks_.end()) return it->second;
  const std::vector<std::string> labels{model_, std::to_string(dp)};
  Rank r{&running_.with(labels),        &waiting_.with(labels),          &kv_usage_.with(labels),
         &kv_blocks_.with(labels),      &prefix_queries_.with(labels),   &prefix_hits_.with(labels),
         &preemptions_.with(labels),    &prompt_tokens_.with(labels),    &generation_tokens_.with(labels),
         &iteration_tokens_.with(labels)};
  return ranks_.emplace(dp, r).first->second;
}

void MetricsState::observe(const RequestMetrics& m) {
  const std::vector<std::string> labels{model_};
  request_success_.with({model_, label_value(m.reason)}).inc();
  e2e_.with(labels).observe(seconds_between(m.arrival, m.finished));
  if (m.scheduled) queue_.with(labels).observe(seconds_between(m.arrival, *m.scheduled));
  if (m.first_token) {
    ttft_.with(labels).observe(seconds_between(m.arrival, *m.first_token));
    if (m.scheduled) prefill_.with(labels).observe(seconds_between(*m.scheduled, *m.first_token));
    decode_.with(labels).observe(seconds_between(*m.first_token, m.last_token.value_or(*m.first_token)));
  }
  Histogram& itl = itl_.with(labels);
  for (float gap : m.inter_token_seconds) {
    if (std::isfinite(gap)) itl.observe(std::max(0.0, static_cast<double>(gap)));
  }
  request_prompt_tokens_.with(labels).observe(std::max(0, m.prompt_tokens));
  request_generation_tokens_.with(labels).observe(std::max(0, m.generation_tokens));
}

void MetricsState::observe(const SchedulerMetrics& m) {
  Rank& r = rank(m.dp);
  r.running->set(m.running);
  r.waiting->set(m.waiting);
  r.preemptions->inc(static_cast<double>(advance(r.last_preemptions, m.preemptions)));
  r.prompt_tokens->inc(std::max(0, m.prompt_tokens));
  r.generation_tokens->inc(std::max(0, m.generation_tokens));
  // An empty micro-batch only keeps data-parallel ranks in step; as an engine step of zero tokens it
  // would pull the histogram towards a load nobody sent.
  if (m.scheduled_tokens > 0) r.iteration_tokens->observe(m.scheduled_tokens);
}

void MetricsState::observe(const KvMetrics& m) {
  Rank& r = rank(m.dp);
  const BlockManagerStats& s = m.stats;
  r.kv_blocks->set(s.num_blocks);
  r.kv_usage->set(s.num_blocks > 0 ? static_cast<double>(s.used_blocks) / s.num_blocks : 0.0);
  r.prefix_queries->inc(static_cast<double>(advance(r.last_prefix_queries, s.prefix_queries)));
  r.prefix_hits->inc(static_cast<double>(advance(r.last_prefix_hits, s.prefix_hits)));
}

void MetricsState::observe(const StageMetrics& m) {
  Histogram*& h = stages_[{m.dp, m.stage}];
  if (!h) h = &stage_seconds_.with({model_, std::to_string(m.dp), std::to_string(m.stage)});
  if (std::isfinite(m.seconds)) h->observe(std::max(0.0, m.seconds));
}

void MetricsState::observe(const CollectiveMetrics& m) {
  for (size_t k = 0; k < kNumCollectiveKinds; ++k) {
    if (m.calls[k] == 0 || !std::isfinite(m.seconds[k])) continue;
    Histogram*& h = collectives_[k];
    if (!h) h = &collective_seconds_.with({model_, label_value(static_cast<Collective>(k))});
    h->observe(std::max(0.0, m.seconds[k]));
  }
  if (m.steps == 0 || !std::isfinite(m.step_seconds)) return;
  if (!timed_steps_) timed_steps_ = &timed_step_seconds_.with({model_});
  for (uint32_t i = 0; i < m.steps; ++i) timed_steps_->observe(std::max(0.0, m.step_seconds / m.steps));
}

void MetricsState::observe(const ExpertMetrics& m) {
  if (m.first_expert < 0) return;
  std::vector<Counter*>& counters = experts_[m.stage];
  const size_t end = static_cast<size_t>(m.first_expert) + m.tokens.size();
  if (counters.size() < end) counters.resize(end, nullptr);
  for (size_t i = 0; i < m.tokens.size(); ++i) {
    const size_t expert = static_cast<size_t>(m.first_expert) + i;
    Counter*& c = counters[expert];
    // Created even for zero tokens: an expert nobody routes to shows as 0, not as a missing series.
    if (!c) c = &expert_tokens_.with({model_, std::to_string(m.stage), std::to_string(expert)});
    if (m.tokens[i] > 0) c->inc(static_cast<double>(m.tokens[i]));
  }
}

bool MetricsState::observe(const MailboxDepth& m, uint64_t actor) {
  const auto family = static_cast<size_t>(m.family);
  if (family >= kNumActorFamilies) return false;
  auto [it, fresh] = mailboxes_.try_emplace(actor, m.family, m.depth);
  if (!fresh) {
    auto& [old_family, old_depth] = it->second;
    std::multiset<uint64_t>& old = depths_[static_cast<size_t>(old_family)];
    old.erase(old.find(old_depth));
    if (old_family != m.family) set_mailbox_gauge(old_family);
    it->second = {m.family, m.depth};
  }
  depths_[family].insert(m.depth);
  set_mailbox_gauge(m.family);
  return fresh;
}

void MetricsState::forget(uint64_t actor) {
  auto it = mailboxes_.find(actor);
  if (it == mailboxes_.end()) return;
  const auto [family, depth] = it->second;
  std::multiset<uint64_t>& depths = depths_[static_cast<size_t>(family)];
  depths.erase(depths.find(depth));
  mailboxes_.erase(it);
  set_mailbox_gauge(family);
}

void MetricsState::set_mailbox_gauge(ActorFamily family) {
  const std::multiset<uint64_t>& depths = depths_[static_cast<size_t>(family)];
  mailbox_depth_.with({model_, label_value(family)}).set(depths.empty() ? 0.0 : static_cast<double>(*depths.rbegin()));
}

namespace {

struct MetricsActorState {
  std::unique_ptr<MetricsState> metrics;
  static inline const char* name = "metrics";
};

caf::behavior metrics_actor(caf::stateful_actor<MetricsActorState>* self, std::string model_name) {
  self->state.metrics = std::make_unique<MetricsState>(std::move(model_name));
  self->set_down_handler([=](caf::down_msg& msg) { self->state.metrics->forget(msg.source.id()); });
  return {
      [=](atoms::observe, const RequestMetrics& m) { self->state.metrics->observe(m); },
      [=](atoms::observe, const SchedulerMetrics& m) { self->state.metrics->observe(m); },
      [=](atoms::observe, const KvMetrics& m) { self->state.metrics->observe(m); },
      [=](atoms::observe, const StageMetrics& m) { self->state.metrics->observe(m); },
      [=](atoms::observe, const CollectiveMetrics& m) { self->state.metrics->observe(m); },
      [=](atoms::observe, const ExpertMetrics& m) { self->state.metrics->observe(m); },
      [=](atoms::observe, const MailboxDepth& m) {
        // The sender is known by its actor id, and watched from its first sample on so that its
        // depth leaves the gauge when it exits (request actors come and go by the thousand).
        const caf::strong_actor_ptr& sender = self->current_sender();
        if (self->state.metrics->observe(m, sender ? sender->id() : 0) && sender) self->monitor(sender);
      },
      [=](atoms::snapshot) { return self->state.metrics->render(); },
  };
}

}  // namespace

caf::actor spawn_metrics(caf::actor_system& system, std::string model_name) {
  return system.spawn(metrics_actor, std::move(model_name));
}

}  // namespace troupe
