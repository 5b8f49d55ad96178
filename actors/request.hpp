// The request actor: one per request. Owns its lifecycle in the runtime: submits it through the
// router, relays each update from its scheduler to the listener, forwards an abort, and tells the
// router when it is done.
#pragma once

#include "actors/atoms.hpp"
#include "actors/runtime.hpp"
#include "actors/scheduler.hpp"
#include "actors/trace.hpp"

namespace troupe {

struct RequestSpec {
  SeqId id = 0;
  std::vector<int32_t> prompt;
  SamplingParams params;
  RequestListener listener;
  caf::actor router;
  TraceRecorder* trace = nullptr;
  std::function<void(SeqId)> on_exit;  // the runtime forgets the request
};

// Protocol: (abort); (update, SequenceUpdate) from its scheduler.
caf::actor spawn_request(caf::actor_system& system, RequestSpec spec);

}  // namespace troupe
