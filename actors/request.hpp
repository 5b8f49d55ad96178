// The request actor: one per request, owning its lifecycle. For text requests it tokenizes (chat
// template included) and validates, then submits through the router; it relays each update from
// its scheduler to the listener, detokenizing incrementally and cutting at stop strings (aborting
// the sequence downstream), forwards a client's abort, and tells the router when it is done.
#pragma once

#include <future>
#include <memory>

#include "actors/atoms.hpp"
#include "actors/client.hpp"
#include "actors/runtime.hpp"
#include "actors/scheduler.hpp"
#include "actors/text_pipeline.hpp"
#include "actors/trace.hpp"

namespace troupe {

struct RequestSpec {
  SeqId id = 0;
  // Token requests: prompt and params are final; `listener` hears token events.
  std::vector<int32_t> prompt;
  SamplingParams params;
  RequestListener listener;
  // Text requests (`text` set): `generate` is tokenized here; `text_listener` hears text events, and
  // `accepted` is fulfilled once the request is valid (or fails with a RequestError).
  std::shared_ptr<const TextPipeline> text;
  GenerateRequest generate;
  GenerateListener text_listener;
  std::shared_ptr<std::promise<void>> accepted;
  int vocab_size = 0;
  int max_model_len = 0;

  caf::actor router;
  caf::actor metrics;  // hears the request's life once it ends (may be unset)
  TraceRecorder* trace = nullptr;
  std::function<void(SeqId)> on_scheduled;  // first scheduled (leaves the queue)
  std::function<void(SeqId)> on_exit;       // the runtime forgets the request
};

// Checks a prompt and its parameters against the model; fills max_tokens when unset (up to the
// context). Throws RequestError (400) with vLLM's messages, naming the parameter.
void validate_request(const std::vector<int32_t>& prompt, SamplingParams& params, int vocab_size, int max_model_len);

// Protocol: (abort); (update, SequenceUpdate) from its scheduler.
caf::actor spawn_request(caf::actor_system& system, RequestSpec spec);

}  // namespace troupe
