#include "actors/router.hpp"

#include <unordered_map>

namespace troupe {
namespace {

struct RouterState {
  std::vector<caf::actor> schedulers;
  int block_size = 16;
  std::vector<int64_t> outstanding;
  std::unordered_map<SeqId, std::pair<int, int64_t>> placed;  // request -> (rank, tokens counted)
  std::unordered_map<uint64_t, int> affinity;                  // first-block hash -> rank
  static inline const char* name = "router";
};

uint64_t first_block_hash(const std::vector<int32_t>& prompt, int block_size) {
  if (static_cast<int>(prompt.size()) < block_size) return 0;
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the first block's ids
  for (int i = 0; i < block_size; ++i) h = (h ^ static_cast<uint32_t>(prompt[i])) * 1099511628211ull;
  return h | 1;
}

caf::behavior router(caf::stateful_actor<RouterState>* self, std::vector<caf::actor> schedulers, int block_size) {
  self->state.schedulers = std::move(schedulers);
  self->state.block_size = block_size;
  self->state.outstanding.assign(self->state.schedulers.size(), 0);
  return {
      [=](atoms::submit, SubmitRequest& r) -> caf::actor {
        RouterState& st = self->state;
        const uint64_t key = first_block_hash(r.prompt, st.block_size);
        int best = 0;
        for (int d = 1; d < static_cast<int>(st.outstanding.size()); ++d)
          if (st.outstanding[d] < st.outstanding[best]) best = d;
        if (key) {
          auto it = st.affinity.find(key);
          if (it != st.affinity.end() && st.outstanding[it->second] == st.outstanding[best]) best = it->second;
          st.affinity[key] = best;
        }
        const int64_t tokens = static_cast<int64_t>(r.prompt.size()) + r.params.max_tokens.value_or(0);
        st.outstanding[best] += tokens;
        st.placed[r.id] = {best, tokens};
        self->send(st.schedulers[best], atoms::submit::value, std::move(r));
        return st.schedulers[best];
      },
      [=](atoms::finished, SeqId id) {
        RouterState& st = self->state;
        auto it = st.placed.find(id);
        if (it == st.placed.end()) return;
        st.outstanding[it->second.first] -= it->second.second;
        st.placed.erase(it);
      },
  };
}

}  // namespace

caf::actor spawn_router(caf::actor_system& system, std::vector<caf::actor> schedulers, int block_size) {
  return system.spawn(router, std::move(schedulers), block_size);
}

}  // namespace troupe
