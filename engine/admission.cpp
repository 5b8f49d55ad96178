#include "engine/admission.hpp"

#include <algorithm>
#include <unordered_set>

namespace troupe {

AdmissionResult admit(BlockManager& blocks, const std::vector<BlockCandidate>& candidates, int token_budget,
                      int max_seqs) {
  AdmissionResult out;
  std::unordered_set<SeqId> preempted;
  // Victims are taken from the back of the running candidates: the lowest priority first.
  int last_running = -1;
  for (size_t i = 0; i < candidates.size(); ++i)
    if (candidates[i].running) last_running = static_cast<int>(i);
  int budget = token_budget;
  const int bs = blocks.block_size();

  for (size_t i = 0; i < candidates.size(); ++i) {
    const BlockCandidate& c = candidates[i];
    if (preempted.count(c.seq)) continue;
    if (static_cast<int>(out.admitted.size()) >= max_seqs || budget <= 0) break;
    Admission a{c.seq, 0, c.num_computed, 0, {}};
    if (c.fresh) {
      // Cheap refusal before touching the prefix cache (its counters count real lookups only): even
      // with no hit, would the first chunk fit?
      const int first_chunk_end = std::min(c.num_tokens, budget);
      if (!c.running && (first_chunk_end + bs - 1) / bs > blocks.num_free_blocks()) break;
      a.num_cached = blocks.attach_cached_prefix(c.seq, c.tokens);
      a.num_computed = a.num_cached;
    }
    a.chunk = std::min(c.num_tokens - a.num_computed, budget);
    if (a.chunk <= 0) {
      if (c.fresh) blocks.free(c.seq);
      continue;
    }
    bool granted = blocks.allocate(c.seq, a.num_computed + a.chunk);
    while (!granted && c.running) {
      // Preempt the lowest-priority running sequence not yet preempted (possibly this one).
      while (last_running >= 0 && (preempted.count(candidates[last_running].seq) || !candidates[last_running].running))
        --last_running;
      if (last_running < 0) break;
      const SeqId victim = candidates[last_running].seq;
      blocks.free(victim);
      preempted.insert(victim);
      out.preempted.push_back(victim);
      if (victim == c.seq) break;
      granted = blocks.allocate(c.seq, a.num_computed + a.chunk);
    }
    if (!granted) {
      if (preempted.count(c.seq)) continue;
      blocks.free(c.seq);  // undo the prefix attach of a waiting sequence
      break;
    }
    a.block_table = blocks.block_table(c.seq);
    budget -= a.chunk;
    out.admitted.push_back(std::move(a));
  }
  // A victim admitted earlier in this step cannot be: victims come from the back, admissions from the
  // front, and the loop stops once they meet.
  return out;
}

}  // namespace troupe
