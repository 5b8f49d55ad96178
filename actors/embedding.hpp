// The embedding actor: one per server. It turns /v1/embeddings requests into prefill-only
// sequences (tokenized here, pooled by the last pipeline stage: last token or mean, L2-normalised),
// gathers the requests that arrive within a millisecond into one submission, and hands each request
// its vectors once all of its inputs are done. The sequences share the schedulers and workers with
// generation, queued first come first served with generation's prompts, so neither starves.
#pragma once

#include <atomic>
#include <memory>

#include "actors/atoms.hpp"
#include "actors/client.hpp"
#include "actors/scheduler.hpp"
#include "actors/text_pipeline.hpp"

namespace troupe {

struct EmbeddingSpec {
  caf::actor router;
  std::shared_ptr<const TextPipeline> text;  // may be null: token-id inputs only
  Pooling pooling = Pooling::last;
  int vocab_size = 0;
  int max_model_len = 0;
  std::atomic<SeqId>* next_id = nullptr;  // ids shared with generation
};

struct EmbedJob {
  EmbedRequest request;
  EmbedListener listener;
};

// Protocol: (submit, EmbedJob); (update, SequenceUpdate) from schedulers.
caf::actor spawn_embedding(caf::actor_system& system, EmbeddingSpec spec);

}  // namespace troupe

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::EmbedJob)
