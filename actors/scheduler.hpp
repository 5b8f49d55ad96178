// The scheduler actor: one per data-parallel rank. Iteration-level continuous batching: each step
// it asks the KV block manager to admit the next micro-batch, sends the plan down its pipeline, and
// keeps up to `pp` micro-batches in flight so every stage has work. Sampled tokens come back from
// the last stage and go out to the request actors. When the model's MoE layers join data-parallel
// ranks, a coordinator drives the steps so that every rank steps together (see dp_coordinator.hpp).
#pragma once

#include "actors/atoms.hpp"
#include "actors/trace.hpp"
#include "actors/worker.hpp"
#include "engine/scheduler.hpp"

namespace troupe {

struct SchedulerSpec {
  int dp_rank = 0;
  int max_in_flight = 1;  // the pipeline depth
  SchedulerConfig config;
  caf::actor kv_manager;
  TraceRecorder* trace = nullptr;
  // Called once with the message its sequences got, when this rank fails the engine (a step of its
  // failed, or the runtime said so): the runtime is unhealthy.
  std::function<void(const std::string&)> on_failure;
  caf::actor metrics;
};

struct SubmitRequest {
  SeqId id = 0;
  std::vector<int32_t> prompt;
  SamplingParams params;
  caf::actor requester;  // receives (update, SequenceUpdate)
  Pooling pooling = Pooling::none;  // an embedding: prefill only
};

struct SchedulerStats {
  int dp_rank = 0;
  int running = 0;
  int waiting = 0;
  int in_flight = 0;
  uint64_t preemptions = 0;
  int64_t outstanding_tokens = 0;
};

// Protocol: (plan, caf::actor first_stage, caf::actor coordinator) once, before anything else (the
// coordinator is unset unless data-parallel ranks step together); (submit, SubmitRequest); (abort, SeqId); (done, PlanPtr, StepResult) from the last
// stage; (step, uint64_t global_step) -> PlanPtr from the coordinator; (stats) -> SchedulerStats;
// (fail, std::string why): the engine failed elsewhere. A step that failed, or a fail message, ends
// every sequence of the rank with an error and refuses later ones with it (step answers an error).
caf::actor spawn_scheduler(caf::actor_system& system, SchedulerSpec spec);

}  // namespace troupe

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::SubmitRequest)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::SequenceUpdate)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::SchedulerStats)
