// The KV block manager actor: one per data-parallel rank. It owns the rank's BlockManager (block
// tables, reference counts, the prefix cache) and answers the scheduler's admission requests; it
// also reports usage and prefix-cache hits.
#pragma once

#include "actors/atoms.hpp"
#include "engine/admission.hpp"
#include "engine/block_manager.hpp"

namespace troupe {

struct AdmissionRequest {
  std::vector<BlockCandidate> candidates;
  int token_budget = 0;
  int max_seqs = 0;
};

// Protocol: (admit, AdmissionRequest) -> AdmissionResult; (free, std::vector<SeqId>);
// (commit, std::vector<BlockCommit>); (stats) -> BlockManagerStats; (reset) -> bool (prefix cache
// cleared); (snapshot) -> bool idle.
// `metrics` (may be unset) hears the block statistics after every admission.
caf::actor spawn_kv_block_manager(caf::actor_system& system, int dp_rank, int num_blocks, int block_size, bool prefix_caching,
                                  caf::actor metrics);

}  // namespace troupe

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::AdmissionRequest)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::AdmissionResult)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::vector<troupe::BlockCommit>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::BlockManagerStats)
