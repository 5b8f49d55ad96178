// The router: one per server. Picks the data-parallel rank of each new request: the one with the
// fewest outstanding tokens, and among equals the one that last served the same first prompt block
// (its prefix cache probably holds it).
#pragma once

#include <vector>

#include "actors/atoms.hpp"
#include "actors/scheduler.hpp"

namespace troupe {

// Protocol: (submit, SubmitRequest) -> caf::actor (the scheduler it went to); (finished, SeqId).
caf::actor spawn_router(caf::actor_system& system, std::vector<caf::actor> schedulers, int block_size);

}  // namespace troupe
