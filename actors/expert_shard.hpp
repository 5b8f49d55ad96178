// The expert shard actor: one per expert-parallel rank of a pipeline stage. It owns the expert map
// (which routed experts live on its rank: a contiguous range, as vLLM places them) and counts the
// tokens routed to each of them, per step, from the routing the workers report. This is where
// expert parallelism shows up as a message flow; the tokens themselves move by collectives.
#pragma once

#include <vector>

#include "actors/atoms.hpp"

namespace troupe {

struct ExpertShardSpec {
  int pp_rank = 0;
  int ep_rank = 0;
  int expert_begin = 0;
  int expert_end = 0;
  caf::actor metrics;  // hears the per-step counts of this shard's experts (may be unset)
};

struct ExpertLoad {
  ExpertShardSpec shard;
  std::vector<int64_t> tokens;  // per local expert, summed over layers and steps
  uint64_t reports = 0;
};

// Expert ids [begin, end) of rank `rank` among `group` expert-parallel ranks.
inline std::pair<int, int> expert_range(int num_experts, int group, int rank) {
  return {num_experts * rank / group, num_experts * (rank + 1) / group};
}

// Protocol: (routing, std::vector<int64_t> counts) — tokens per expert of the whole model, from one
// worker's step; (snapshot) -> ExpertLoad.
caf::actor spawn_expert_shard(caf::actor_system& system, ExpertShardSpec spec);

}  // namespace troupe

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::ExpertLoad)
