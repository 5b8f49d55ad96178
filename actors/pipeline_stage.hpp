// The pipeline stage actor: one per pipeline stage of each data-parallel rank. It hands each
// micro-batch to its tensor-parallel group of workers, and once all of them are done passes the
// plan on to the next stage, or the sampled tokens back to the scheduler from the last stage. The
// first worker error fails the micro-batch at once (and every later one: see StageState).
// Micro-batches flow through in order; several can be in different stages at once.
#pragma once

#include <vector>

#include "actors/atoms.hpp"
#include "actors/trace.hpp"
#include "actors/worker.hpp"

namespace troupe {

struct StageSpec {
  int dp_rank = 0;
  int pp_rank = 0;
  std::vector<caf::actor> workers;  // the stage's tensor-parallel group, tp rank order
  caf::actor next;                  // the next stage; unset on the last stage
  caf::actor scheduler;             // receives (done, PlanPtr, StepResult)
  TraceRecorder* trace = nullptr;
  caf::actor metrics;
};

// Protocol: (run, PlanPtr) from the scheduler or the previous stage.
caf::actor spawn_pipeline_stage(caf::actor_system& system, StageSpec spec);

}  // namespace troupe
