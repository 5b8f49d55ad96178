#include "actors/scheduler.hpp"

#include <unordered_map>

#include "actors/kv_block_manager.hpp"
#include "actors/metrics.hpp"

namespace troupe {
namespace {

struct SchedulerState {
  SchedulerSpec spec;
  caf::actor first_stage;
  caf::actor coordinator;
  std::unique_ptr<Scheduler> scheduler;
  std::unordered_map<SeqId, caf::actor> requesters;
  bool admission_pending = false;
  std::string failure;  // set once the engine failed: nothing is scheduled again
  std::string track;
  static inline const char* name = "scheduler";
};

using Self = caf::stateful_actor<SchedulerState>;

void send_frees(Self* self, std::vector<SeqId> seqs) {
  if (!seqs.empty()) self->send(self->state.spec.kv_manager, atoms::free::value, std::move(seqs));
}

// Asks the block manager for the next micro-batch and turns its answer into a plan (or nothing).
template <class OnPlan>
void admit_next(Self* self, bool allow_empty, OnPlan on_plan) {
  SchedulerState& st = self->state;
  st.admission_pending = true;
  AdmissionRequest request{st.scheduler->candidates(), st.spec.config.max_num_batched_tokens, st.spec.config.max_num_seqs};
  self->request(st.spec.kv_manager, caf::infinite, atoms::admit::value, std::move(request))
      .then([=](AdmissionResult& admission) mutable {
        SchedulerState& st = self->state;
        st.admission_pending = false;
        if (!st.failure.empty()) {
          // Granted after the engine failed: the blocks go straight back.
          std::vector<SeqId> granted;
          for (const Admission& a : admission.admitted) granted.push_back(a.seq);
          send_frees(self, std::move(granted));
          return on_plan(PlanPtr{});
        }
        std::vector<SeqId> stale;
        std::optional<StepPlan> plan = st.scheduler->plan(admission, allow_empty, stale);
        send_frees(self, std::move(stale));
        if (plan) plan->dp_rank = st.spec.dp_rank;
        on_plan(plan ? std::make_shared<const StepPlan>(std::move(*plan)) : PlanPtr{});
      });
}

// The queue as it is now, with no step's token counts.
SchedulerMetrics queue_metrics(const SchedulerState& st) {
  SchedulerMetrics m;
  m.dp = st.spec.dp_rank;
  m.running = st.scheduler->num_running();
  m.waiting = st.scheduler->num_waiting();
  m.preemptions = st.scheduler->num_preemptions();
  return m;
}

void try_schedule(Self* self) {
  SchedulerState& st = self->state;
  if (!st.failure.empty()) return;
  if (st.coordinator) {
    if (st.scheduler->has_schedulable()) self->send(st.coordinator, atoms::ready::value, st.spec.dp_rank);
    return;
  }
  if (st.admission_pending || st.scheduler->in_flight() >= st.spec.max_in_flight || !st.scheduler->has_schedulable())
    return;
  admit_next(self, false, [=](PlanPtr plan) {
    if (!plan) return;
    auto with_step = std::make_shared<StepPlan>(*plan);
    with_step->step = with_step->micro_batch;
    self->send(self->state.first_stage, atoms::run::value, PlanPtr(std::move(with_step)));
    try_schedule(self);
  });
}

void deliver(Self* self, std::vector<SequenceUpdate>& updates) {
  SchedulerState& st = self->state;
  for (SequenceUpdate& u : updates) {
    auto it = st.requesters.find(u.seq);
    if (it == st.requesters.end()) continue;
    const bool gone = u.aborted || u.finish != FinishReason::none;
    self->send(it->second, atoms::update::value, std::move(u));
    if (gone) st.requesters.erase(it);
  }
}

SequenceUpdate failed_update(SeqId id, const std::string& why) {
  SequenceUpdate u;
  u.seq = id;
  u.aborted = true;
  u.error = why;
  return u;
}

// The engine failed (here or on another data-parallel rank): a step of it may never complete, since
// the failed rank's peers can be stuck in a collective for good. So nothing waits for the steps in
// flight: every sequence ends now with the cause, its blocks go back, and later submits are refused.
void fail_engine(Self* self, const std::string& why) {
  SchedulerState& st = self->state;
  if (!st.failure.empty()) return;
  st.failure = why;
  // First, so that whoever hears of the failure from a request (a client that then asks /health)
  // finds the runtime already unhealthy.
  if (st.spec.on_failure) st.spec.on_failure(why);
  std::vector<SeqId> to_free;
  std::vector<SequenceUpdate> updates = st.scheduler->fail_all(to_free);
  send_frees(self, std::move(to_free));
  for (SequenceUpdate& u : updates) u.error = why;
  deliver(self, updates);
  for (auto& [id, requester] : st.requesters) self->send(requester, atoms::update::value, failed_update(id, why));
  st.requesters.clear();
  if (st.spec.metrics) {
    SchedulerMetrics m;
    m.dp = st.spec.dp_rank;
    m.preemptions = st.scheduler->num_preemptions();
    self->send(st.spec.metrics, atoms::observe::value, m);
  }
}

caf::behavior scheduler(Self* self, SchedulerSpec spec) {
  self->state.spec = std::move(spec);
  self->state.scheduler = std::make_unique<Scheduler>(self->state.spec.config);
  self->state.track = "scheduler dp" + std::to_string(self->state.spec.dp_rank);
  return {
      [=](atoms::plan, caf::actor& first_stage, caf::actor& coordinator) {
        self->state.first_stage = std::move(first_stage);
        self->state.coordinator = std::move(coordinator);
      },
      [=](atoms::submit, SubmitRequest& r) {
        SchedulerState& st = self->state;
        if (!st.failure.empty()) return self->send(r.requester, atoms::update::value, failed_update(r.id, st.failure));
        st.requesters[r.id] = r.requester;
        st.scheduler->add(r.id, std::move(r.prompt), std::move(r.params), r.pooling);
        try_schedule(self);
      },
      [=](atoms::abort, SeqId id) {
        SchedulerState& st = self->state;
        if (st.scheduler->abort(id)) send_frees(self, {id});
        // Out of the queue now (it was not in flight): between steps nothing else may come to
        // report the queue, with no step after this one.
        if (st.spec.metrics && !st.scheduler->knows(id))
          self->send(st.spec.metrics, atoms::observe::value, queue_metrics(st));
        // A sequence in flight reports its abort when its step completes.
        auto it = st.requesters.find(id);
        if (it != st.requesters.end() && !st.scheduler->knows(id)) {
          SequenceUpdate u;
          u.seq = id;
          u.aborted = true;
          self->send(it->second, atoms::update::value, std::move(u));
          st.requesters.erase(it);
        }
      },
      [=](atoms::done, const PlanPtr& plan, const StepResult& result) {
        SchedulerState& st = self->state;
        if (!st.failure.empty()) return;  // its sequences ended when the engine failed
        if (!result.error.empty()) return fail_engine(self, "the engine failed: " + result.error);
        std::vector<SeqId> to_free;
        std::vector<BlockCommit> commits;
        std::vector<SequenceUpdate> updates = st.scheduler->complete(*plan, result, to_free, commits);
        if (!commits.empty()) self->send(st.spec.kv_manager, atoms::commit::value, std::move(commits));
        send_frees(self, std::move(to_free));
        if (st.spec.metrics) {
          SchedulerMetrics m = queue_metrics(st);
          for (int32_t c : plan->chunk) m.scheduled_tokens += c;
          for (const SequenceUpdate& u : updates) {
            m.generation_tokens += static_cast<int>(u.tokens.size());
            if (!u.tokens.empty() && u.num_output_tokens == static_cast<int>(u.tokens.size())) m.prompt_tokens += u.num_prompt_tokens;
          }
          self->send(st.spec.metrics, atoms::observe::value, m);
          self->send(st.spec.metrics, atoms::observe::value, MailboxDepth{ActorFamily::scheduler, self->mailbox().size()});
        }
        deliver(self, updates);
        if (st.coordinator) self->send(st.coordinator, atoms::done::value, st.spec.dp_rank, plan->step);
        try_schedule(self);
      },
      [=](atoms::step, uint64_t global_step) -> caf::result<PlanPtr> {
        if (!self->state.failure.empty()) return caf::make_error(caf::sec::runtime_error, self->state.failure);
        auto promise = self->make_response_promise<PlanPtr>();
        admit_next(self, true, [=](PlanPtr plan) mutable {
          if (!plan) {
            promise.deliver(caf::make_error(caf::sec::runtime_error, self->state.failure));
            return;
          }
          auto with_step = std::make_shared<StepPlan>(*plan);
          with_step->step = global_step;
          promise.deliver(PlanPtr(std::move(with_step)));
        });
        return promise;
      },
      [=](atoms::fail, const std::string& why) { fail_engine(self, why); },
      [=](atoms::stats) {
        const Scheduler& s = *self->state.scheduler;
        return SchedulerStats{self->state.spec.dp_rank, s.num_running(), s.num_waiting(), s.in_flight(),
                              s.num_preemptions(), s.outstanding_tokens()};
      },
  };
}

}  // namespace

caf::actor spawn_scheduler(caf::actor_system& system, SchedulerSpec spec) {
  return system.spawn(scheduler, std::move(spec));
}

}  // namespace troupe
