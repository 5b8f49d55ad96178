#include "actors/kv_block_manager.hpp"

#include <memory>

#include "actors/metrics.hpp"

namespace troupe {
namespace {

struct KvState {
  std::unique_ptr<BlockManager> blocks;
  int dp = 0;
  caf::actor metrics;
  static inline const char* name = "kv_block_manager";
};

caf::behavior kv_block_manager(caf::stateful_actor<KvState>* self, int dp, int num_blocks, int block_size,
                               bool prefix_caching, caf::actor metrics) {
  self->state.blocks = std::make_unique<BlockManager>(num_blocks, block_size, prefix_caching);
  self->state.dp = dp;
  self->state.metrics = std::move(metrics);
  return {
      [=](atoms::admit, const AdmissionRequest& r) {
        AdmissionResult result = admit(*self->state.blocks, r.candidates, r.token_budget, r.max_seqs);
        if (self->state.metrics) {
          self->send(self->state.metrics, atoms::observe::value, KvMetrics{self->state.dp, self->state.blocks->stats()});
          self->send(self->state.metrics, atoms::observe::value,
                     MailboxDepth{ActorFamily::kv_block_manager, self->mailbox().size()});
        }
        return result;
      },
      [=](atoms::free, const std::vector<SeqId>& seqs) {
        for (SeqId s : seqs) self->state.blocks->free(s);
        if (self->state.metrics)
          self->send(self->state.metrics, atoms::observe::value, KvMetrics{self->state.dp, self->state.blocks->stats()});
      },
      [=](atoms::commit, const std::vector<BlockCommit>& commits) {
        for (const BlockCommit& c : commits) self->state.blocks->commit(c.seq, c.tokens, c.num_computed);
      },
      [=](atoms::stats) { return self->state.blocks->stats(); },
      [=](atoms::reset) {
        self->state.blocks->reset_prefix_cache();
        return true;
      },
      [=](atoms::snapshot) { return self->state.blocks->idle(); },
  };
}

}  // namespace

caf::actor spawn_kv_block_manager(caf::actor_system& system, int dp_rank, int num_blocks, int block_size, bool prefix_caching,
                                  caf::actor metrics) {
  return system.spawn(kv_block_manager, dp_rank, num_blocks, block_size, prefix_caching, std::move(metrics));
}

}  // namespace troupe
