#include "actors/kv_block_manager.hpp"

#include <memory>

namespace troupe {
namespace {

struct KvState {
  std::unique_ptr<BlockManager> blocks;
  static inline const char* name = "kv_block_manager";
};

caf::behavior kv_block_manager(caf::stateful_actor<KvState>* self, int num_blocks, int block_size, bool prefix_caching) {
  self->state.blocks = std::make_unique<BlockManager>(num_blocks, block_size, prefix_caching);
  return {
      [=](atoms::admit, const AdmissionRequest& r) {
        return admit(*self->state.blocks, r.candidates, r.token_budget, r.max_seqs);
      },
      [=](atoms::free, const std::vector<SeqId>& seqs) {
        for (SeqId s : seqs) self->state.blocks->free(s);
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

caf::actor spawn_kv_block_manager(caf::actor_system& system, int num_blocks, int block_size, bool prefix_caching) {
  return system.spawn(kv_block_manager, num_blocks, block_size, prefix_caching);
}

}  // namespace troupe
