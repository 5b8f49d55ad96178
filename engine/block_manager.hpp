// The paged KV cache's bookkeeping for one data-parallel rank: which blocks each sequence holds,
// reference counts, and prefix caching (vLLM's automatic prefix caching). A full block is named by a
// hash chained over all tokens up to its end, so two sequences with the same first n·block_size
// tokens share those n blocks. Unreferenced blocks that still hold a cached prefix are kept and
// evicted least-recently-used first when new blocks are needed.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace troupe {

using SeqId = uint64_t;

struct BlockManagerStats {
  int num_blocks = 0;
  int used_blocks = 0;       // referenced by at least one sequence
  int cached_free_blocks = 0;  // unreferenced but holding a cached prefix (reusable or evictable)
  uint64_t prefix_queries = 0;  // prompt tokens looked up, as vLLM counts them
  uint64_t prefix_hits = 0;     // of those, tokens found in the cache
};

class BlockManager {
 public:
  BlockManager(int num_blocks, int block_size, bool enable_prefix_caching);
  ~BlockManager();
  BlockManager(const BlockManager&) = delete;
  BlockManager& operator=(const BlockManager&) = delete;

  int block_size() const;
  int num_blocks() const;

  // For a sequence scheduled for the first time (or again after preemption): attaches the cached
  // blocks of the longest prefix of `tokens` made of full blocks and returns how many tokens they
  // hold. Never the whole of `tokens`: the last token is always computed, to give logits. Counts
  // len(tokens) queries and the returned tokens as hits. Returns 0 without prefix caching.
  int attach_cached_prefix(SeqId seq, std::span<const int32_t> tokens);

  // Ensures the sequence holds blocks for its first `num_tokens` tokens. All or nothing: returns
  // false, changing nothing, when too few blocks are free (free or evictable).
  bool allocate(SeqId seq, int num_tokens);
  // Blocks that allocate(seq, num_tokens) would take now (0 when it already holds enough).
  int blocks_needed(SeqId seq, int num_tokens) const;

  // Records that the KV of the sequence's first `num_computed` tokens (`tokens` holds at least that
  // many: prompt then output) is written, so its full blocks can be found by later sequences.
  void commit(SeqId seq, std::span<const int32_t> tokens, int num_computed);

  // Releases all blocks of the sequence (finished, aborted or preempted). Blocks whose last
  // reference goes become free, or cached-free when they hold a committed full block.
  void free(SeqId seq);

  // The sequence's blocks in order (empty for an unknown sequence).
  const std::vector<int32_t>& block_table(SeqId seq) const;

  int num_free_blocks() const;  // allocatable now: free plus cached-free
  double usage() const;         // referenced blocks / all blocks, as vLLM's kv_cache_usage_perc
  BlockManagerStats stats() const;
  // Forgets every cached prefix that no sequence references (their blocks become plainly free).
  void reset_prefix_cache();
  // No sequence holds a block (the state after every request finished or was aborted).
  bool idle() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace troupe
