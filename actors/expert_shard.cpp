#include "actors/expert_shard.hpp"

#include "actors/metrics.hpp"

namespace troupe {
namespace {

struct ExpertShardState {
  ExpertLoad load;
  static inline const char* name = "expert_shard";
};

caf::behavior expert_shard(caf::stateful_actor<ExpertShardState>* self, ExpertShardSpec spec) {
  self->state.load.shard = spec;
  self->state.load.tokens.assign(spec.expert_end - spec.expert_begin, 0);
  return {
      [=](atoms::routing, const std::vector<int64_t>& counts) {
        ExpertLoad& l = self->state.load;
        for (int e = l.shard.expert_begin; e < l.shard.expert_end && e < static_cast<int>(counts.size()); ++e)
          l.tokens[e - l.shard.expert_begin] += counts[e];
        ++l.reports;
        if (l.shard.metrics) {
          ExpertMetrics m{l.shard.pp_rank, l.shard.expert_begin, {}};
          for (int e = l.shard.expert_begin; e < l.shard.expert_end && e < static_cast<int>(counts.size()); ++e)
            m.tokens.push_back(counts[e]);
          self->send(l.shard.metrics, atoms::observe::value, std::move(m));
        }
      },
      [=](atoms::snapshot) { return self->state.load; },
  };
}

}  // namespace

caf::actor spawn_expert_shard(caf::actor_system& system, ExpertShardSpec spec) {
  return system.spawn(expert_shard, spec);
}

}  // namespace troupe
