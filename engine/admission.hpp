// Which sequences get KV blocks for the next step: the allocation half of continuous batching,
// run by the KV block manager's owner. Candidates come in priority order (running sequences first,
// then waiting ones, each first come first served). Running sequences always get their blocks, by
// preempting (recompute) the lowest-priority running sequences when blocks run out; waiting ones are
// admitted while blocks, the token budget and the sequence limit last.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/block_manager.hpp"

namespace troupe {

struct BlockCandidate {
  SeqId seq = 0;
  bool running = false;          // running sequences may preempt; waiting ones wait
  bool fresh = false;            // holds no blocks yet: look its tokens up in the prefix cache
  std::vector<int32_t> tokens;   // every known token (prompt then output); needed when fresh
  int num_tokens = 0;            // known tokens
  int num_computed = 0;          // tokens already in the cache (0 when fresh)
};

struct Admission {
  SeqId seq = 0;
  int num_cached = 0;    // prefix-cache hit, in tokens (fresh candidates)
  int num_computed = 0;  // tokens in the cache before this step, hits included
  int chunk = 0;         // tokens to compute this step
  std::vector<int32_t> block_table;
};

struct AdmissionResult {
  std::vector<Admission> admitted;  // in priority order
  std::vector<SeqId> preempted;     // lost their blocks; back to waiting, recomputed later
};

// The tokens of a sequence whose KV is now computed up to num_computed, for the prefix cache.
struct BlockCommit {
  SeqId seq = 0;
  std::vector<int32_t> tokens;
  int num_computed = 0;
};

AdmissionResult admit(BlockManager& blocks, const std::vector<BlockCandidate>& candidates, int token_budget,
                      int max_seqs);

}  // namespace troupe
