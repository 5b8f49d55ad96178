#include "actors/pipeline_stage.hpp"

#include "actors/metrics.hpp"

namespace troupe {
namespace {

struct StageState {
  StageSpec spec;
  std::string track;
  // A micro-batch failed: its group may be stuck in a collective for good, so later ones fail at
  // once instead of queueing behind it.
  std::string failure;
  static inline const char* name = "pipeline_stage";
};

// Collects the replies of a stage's workers for one micro-batch. The first error ends it: the other
// ranks may never answer (a GPU peer of a failed rank waits in its collective forever).
struct Pending {
  size_t replies = 0;
  bool finished = false;
  StepResult sampled;  // from tensor-parallel rank 0
  std::string error;
};

caf::behavior pipeline_stage(caf::stateful_actor<StageState>* self, StageSpec spec) {
  self->state.spec = std::move(spec);
  self->state.track = "stage dp" + std::to_string(self->state.spec.dp_rank) + " pp" + std::to_string(self->state.spec.pp_rank);
  return {
      [=](atoms::run, const PlanPtr& plan) {
        StageState& st = self->state;
        auto pending = std::make_shared<Pending>();
        const auto start = TraceRecorder::Clock::now();
        auto finish = [=] {
          StageState& st = self->state;
          pending->finished = true;
          if (!pending->error.empty() && st.failure.empty()) st.failure = pending->error;
          if (st.spec.metrics) {
            const double seconds = std::chrono::duration<double>(TraceRecorder::Clock::now() - start).count();
            self->send(st.spec.metrics, atoms::observe::value, StageMetrics{st.spec.dp_rank, st.spec.pp_rank, seconds});
            self->send(st.spec.metrics, atoms::observe::value, MailboxDepth{ActorFamily::pipeline_stage, self->mailbox().size()});
          }
          if (st.spec.trace)
            st.spec.trace->span(st.track, "micro-batch " + std::to_string(plan->micro_batch), start, st.spec.trace->now(),
                                {{"micro_batch", static_cast<int64_t>(plan->micro_batch)},
                                 {"step", static_cast<int64_t>(plan->step)},
                                 {"tokens", plan->batch.num_tokens()},
                                 {"seqs", plan->batch.num_seqs()}});
          if (!pending->error.empty()) {
            StepResult failed;
            failed.micro_batch = plan->micro_batch;
            failed.error = pending->error;
            self->send(st.spec.scheduler, atoms::done::value, plan, std::move(failed));
          } else if (st.spec.next) {
            self->send(st.spec.next, atoms::run::value, plan);
          } else {
            self->send(st.spec.scheduler, atoms::done::value, plan, std::move(pending->sampled));
          }
        };
        if (!st.failure.empty()) {
          pending->error = st.failure;
          return finish();
        }
        for (size_t i = 0; i < st.spec.workers.size(); ++i) {
          self->request(st.spec.workers[i], caf::infinite, atoms::run::value, plan)
              .then(
                  [=](StepResult& r) {
                    if (pending->finished) return;
                    if (!r.error.empty()) {
                      pending->error = r.error;
                      return finish();
                    }
                    if (i == 0) pending->sampled = std::move(r);
                    if (++pending->replies == self->state.spec.workers.size()) finish();
                  },
                  [=](caf::error& e) {
                    if (pending->finished) return;
                    pending->error = "worker unreachable: " + to_string(e);
                    finish();
                  });
        }
      },
  };
}

}  // namespace

caf::actor spawn_pipeline_stage(caf::actor_system& system, StageSpec spec) {
  return system.spawn(pipeline_stage, std::move(spec));
}

}  // namespace troupe
