// The data-parallel step coordinator, for MoE models with dp > 1: the MoE layers of all
// data-parallel ranks exchange tokens (all-to-all, or all-gather and reduce-scatter), so the ranks
// must run the same global steps in the same order. When any scheduler has work, the coordinator
// asks every scheduler for its plan of global step g (an idle rank answers with an empty plan) and
// releases them together, keeping up to `pp` steps in flight.
#pragma once

#include <vector>

#include "actors/atoms.hpp"

namespace troupe {

struct CoordinatorSpec {
  std::vector<caf::actor> schedulers;    // by data-parallel rank
  std::vector<caf::actor> first_stages;  // by data-parallel rank
  int max_in_flight = 1;
};

// Protocol: (ready, int dp_rank) — that scheduler has work; (done, int dp_rank, uint64_t step).
caf::actor spawn_dp_coordinator(caf::actor_system& system, CoordinatorSpec spec);

}  // namespace troupe
