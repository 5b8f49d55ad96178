#include "actors/embedding.hpp"

#include <chrono>
#include <unordered_map>

namespace troupe {
namespace {

// One /v1/embeddings request in flight.
struct Pending {
  EmbedListener listener;
  EmbedResult result;
  size_t remaining = 0;
};

struct EmbeddingState {
  EmbeddingSpec spec;
  std::vector<EmbedJob> batch;  // waiting for the flush
  bool flush_scheduled = false;
  std::unordered_map<SeqId, std::pair<std::shared_ptr<Pending>, size_t>> seqs;  // -> (request, input index)
  static inline const char* name = "embedding";
};

using Self = caf::stateful_actor<EmbeddingState>;
using flush_atom = caf::atom_constant<caf::atom("flush")>;

std::vector<std::vector<int32_t>> inputs_of(const EmbeddingState& st, const EmbedRequest& r) {
  std::vector<std::vector<int32_t>> out = r.token_ids;
  for (const std::string& text : r.texts) {
    if (!st.spec.text) throw RequestError(400, "this model has no tokenizer; send token ids", "input");
    out.push_back(st.spec.text->tokenizer().encode(text));
  }
  if (out.empty()) throw RequestError(400, "The input is empty.", "input");
  for (const auto& ids : out) {
    if (ids.empty()) throw RequestError(400, "An input is empty.", "input");
    if (static_cast<int>(ids.size()) > st.spec.max_model_len)
      throw RequestError(400, "This model's maximum context length is " + std::to_string(st.spec.max_model_len) +
                                  " tokens. However, an input has " + std::to_string(ids.size()) + " tokens.",
                         "input");
    for (int32_t id : ids)
      if (id < 0 || id >= st.spec.vocab_size)
        throw RequestError(400, "Token id " + std::to_string(id) + " is out of vocabulary.", "input");
  }
  return out;
}

void flush(Self* self) {
  EmbeddingState& st = self->state;
  st.flush_scheduled = false;
  for (EmbedJob& job : st.batch) {
    auto pending = std::make_shared<Pending>();
    pending->listener = std::move(job.listener);
    std::vector<std::vector<int32_t>> inputs;
    try {
      inputs = inputs_of(st, job.request);
    } catch (const std::exception& e) {
      pending->result.error = e.what();
      pending->listener(std::move(pending->result));
      continue;
    }
    pending->remaining = inputs.size();
    pending->result.embeddings.resize(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      const SeqId id = (*st.spec.next_id)++;
      pending->result.prompt_tokens += static_cast<int>(inputs[i].size());
      st.seqs[id] = {pending, i};
      SamplingParams params;
      params.max_tokens = 1;  // never sampled: the sequence ends when its prompt is computed
      SubmitRequest submit{id, std::move(inputs[i]), params, caf::actor_cast<caf::actor>(self), st.spec.pooling};
      self->send(st.spec.router, atoms::submit::value, std::move(submit));
    }
  }
  st.batch.clear();
}

caf::behavior embedding(Self* self, EmbeddingSpec spec) {
  self->state.spec = std::move(spec);
  return {
      [=](atoms::submit, EmbedJob& job) {
        EmbeddingState& st = self->state;
        st.batch.push_back(std::move(job));
        if (!st.flush_scheduled) {
          st.flush_scheduled = true;
          self->delayed_send(self, std::chrono::milliseconds(1), flush_atom::value);
        }
      },
      [=](flush_atom) { flush(self); },
      // The router answers each submit with the scheduler it chose; embeddings never need it.
      [=](const caf::actor&) {},
      [=](atoms::update, SequenceUpdate& u) {
        EmbeddingState& st = self->state;
        auto it = st.seqs.find(u.seq);
        if (it == st.seqs.end() || (u.embedding.empty() && !u.aborted)) return;
        auto [pending, index] = it->second;
        st.seqs.erase(it);
        self->send(st.spec.router, atoms::finished::value, u.seq);
        if (u.aborted) pending->result.error = u.error.empty() ? "the embedding was aborted" : u.error;
        pending->result.embeddings[index] = std::move(u.embedding);
        if (--pending->remaining == 0) pending->listener(std::move(pending->result));
      },
  };
}

}  // namespace

caf::actor spawn_embedding(caf::actor_system& system, EmbeddingSpec spec) {
  return system.spawn(embedding, std::move(spec));
}

}  // namespace troupe
