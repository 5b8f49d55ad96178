#include "actors/dp_coordinator.hpp"

#include <map>

#include "actors/worker.hpp"

namespace troupe {
namespace {

struct CoordinatorState {
  CoordinatorSpec spec;
  std::vector<bool> wants;
  std::map<uint64_t, size_t> done;  // global step -> ranks that finished it
  uint64_t next_step = 0;
  int in_flight = 0;
  bool forming = false;
  bool failed = false;  // a scheduler refused a step: the engine failed, no step forms again
  static inline const char* name = "dp_coordinator";
};

using Self = caf::stateful_actor<CoordinatorState>;

void maybe_form(Self* self) {
  CoordinatorState& st = self->state;
  if (st.failed || st.forming || st.in_flight >= st.spec.max_in_flight) return;
  bool any = false;
  for (bool w : st.wants) any = any || w;
  if (!any) return;
  st.forming = true;
  std::fill(st.wants.begin(), st.wants.end(), false);
  const uint64_t step = st.next_step++;
  const size_t ranks = st.spec.schedulers.size();
  auto plans = std::make_shared<std::vector<PlanPtr>>(ranks);
  auto replies = std::make_shared<size_t>(0);
  for (size_t dp = 0; dp < ranks; ++dp) {
    self->request(st.spec.schedulers[dp], caf::infinite, atoms::step::value, step)
        .then(
            [=](PlanPtr& plan) {
              (*plans)[dp] = std::move(plan);
              if (++*replies < ranks) return;
              CoordinatorState& st = self->state;
              if (st.failed) return;
              for (size_t r = 0; r < ranks; ++r) self->send(st.spec.first_stages[r], atoms::run::value, (*plans)[r]);
              ++st.in_flight;
              st.forming = false;
              maybe_form(self);
            },
            // The ranks step together: without one rank's plan the others' would wait for it in
            // their MoE collectives.
            [=](caf::error&) { self->state.failed = true; });
  }
}

caf::behavior dp_coordinator(Self* self, CoordinatorSpec spec) {
  self->state.spec = std::move(spec);
  self->state.wants.assign(self->state.spec.schedulers.size(), false);
  return {
      [=](atoms::ready, int dp) {
        self->state.wants[dp] = true;
        maybe_form(self);
      },
      [=](atoms::done, int, uint64_t step) {
        CoordinatorState& st = self->state;
        if (++st.done[step] == st.spec.schedulers.size()) {
          st.done.erase(step);
          --st.in_flight;
        }
        maybe_form(self);
      },
  };
}

}  // namespace

caf::actor spawn_dp_coordinator(caf::actor_system& system, CoordinatorSpec spec) {
  return system.spawn(dp_coordinator, std::move(spec));
}

}  // namespace troupe
