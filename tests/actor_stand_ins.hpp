// Stand-ins for the actors around the one a test drives: a worker or first stage that never
// answers, an actor system config that keeps CAF quiet and small, and a wait for a step in flight.
#pragma once

#include <chrono>
#include <thread>
#include <vector>

#include "actors/atoms.hpp"
#include "actors/scheduler.hpp"
#include "actors/worker.hpp"

namespace troupe::test {

// A worker (or first stage) stuck in a collective: takes steps and never answers them.
struct SilentState {
  std::vector<caf::typed_response_promise<StepResult>> held;  // kept: no broken promise answers for it
  static inline const char* name = "silent";
};

inline caf::behavior silent_worker(caf::stateful_actor<SilentState>* self) {
  return {
      [=](atoms::run, const PlanPtr&) -> caf::result<StepResult> {
        self->state.held.push_back(self->make_response_promise<StepResult>());
        return self->state.held.back();
      },
  };
}

inline caf::actor_system_config& quiet(caf::actor_system_config& cfg) {
  cfg.set("scheduler.max-threads", size_t{2});
  cfg.set("logger.console", caf::atom("none"));
  return cfg;
}

// The scheduler's steps in flight, once there is one (or 0 after a second of asking).
inline int steps_in_flight(caf::scoped_actor& self, const caf::actor& scheduler) {
  int in_flight = 0;
  for (int tries = 0; tries < 200 && in_flight == 0; ++tries) {
    self->request(scheduler, caf::infinite, atoms::stats::value)
        .receive([&](const SchedulerStats& s) { in_flight = s.in_flight; }, [](caf::error&) {});
    if (in_flight == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return in_flight;
}

}  // namespace troupe::test
