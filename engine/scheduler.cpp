#include "engine/scheduler.hpp"

#include <algorithm>

namespace troupe {
namespace {

void erase_id(std::vector<SeqId>& v, SeqId id) { v.erase(std::remove(v.begin(), v.end(), id), v.end()); }
void erase_id(std::deque<SeqId>& v, SeqId id) { v.erase(std::remove(v.begin(), v.end(), id), v.end()); }

}  // namespace

void Scheduler::add(SeqId id, std::vector<int32_t> prompt, SamplingParams params, Pooling pooling) {
  Sequence s;
  s.pooling = pooling;
  s.id = id;
  s.prompt_len = static_cast<int>(prompt.size());
  s.tokens = std::move(prompt);
  s.params = std::move(params);
  seqs_.emplace(id, std::move(s));
  waiting_.push_back(id);
}

bool Scheduler::abort(SeqId id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return false;
  Sequence& s = it->second;
  if (s.in_flight) {
    s.aborted = true;
    return false;
  }
  const bool held = !s.fresh;
  if (s.announced) released_.push_back(id);
  erase_id(waiting_, id);
  erase_id(running_, id);
  seqs_.erase(it);
  return held;
}

std::vector<BlockCandidate> Scheduler::candidates() const {
  std::vector<BlockCandidate> out;
  for (SeqId id : running_) {
    const Sequence& s = seqs_.at(id);
    if (s.in_flight || s.aborted) continue;
    out.push_back({id, true, false, {}, static_cast<int>(s.tokens.size()), s.num_computed});
  }
  for (SeqId id : waiting_) {
    const Sequence& s = seqs_.at(id);
    out.push_back({id, false, true, s.tokens, static_cast<int>(s.tokens.size()), 0});
  }
  return out;
}

bool Scheduler::has_schedulable() const {
  if (!waiting_.empty()) return true;
  for (SeqId id : running_)
    if (!seqs_.at(id).in_flight) return true;
  return false;
}

int64_t Scheduler::outstanding_tokens() const {
  int64_t n = 0;
  for (const auto& [id, s] : seqs_) {
    const int outputs = static_cast<int>(s.tokens.size()) - s.prompt_len;
    const int max_new = s.params.max_tokens.value_or(config_.max_model_len - s.prompt_len);
    n += static_cast<int64_t>(s.tokens.size()) - s.num_computed + std::max(0, max_new - outputs);
  }
  return n;
}

std::optional<StepPlan> Scheduler::plan(const AdmissionResult& admission, bool allow_empty, std::vector<SeqId>& stale) {
  // Preempted sequences lose their KV and go back to the front of the queue, to be recomputed.
  for (auto it = admission.preempted.rbegin(); it != admission.preempted.rend(); ++it) {
    auto found = seqs_.find(*it);
    if (found == seqs_.end()) continue;  // aborted meanwhile; its blocks are already gone
    Sequence& s = found->second;
    s.running = false;
    s.fresh = true;
    s.num_computed = 0;
    erase_id(running_, s.id);
    waiting_.push_front(s.id);
    ++preemptions_;
  }
  std::vector<const Admission*> admitted;
  for (const Admission& a : admission.admitted) {
    if (seqs_.count(a.seq)) {
      admitted.push_back(&a);
    } else {
      stale.push_back(a.seq);
    }
  }
  if (admitted.empty() && !allow_empty) return std::nullopt;

  StepPlan plan;
  plan.micro_batch = next_micro_batch_++;
  plan.released = std::move(released_);
  released_.clear();
  for (const Admission* ap : admitted) {
    const Admission& a = *ap;
    Sequence& s = seqs_.at(a.seq);
    if (!s.running) {
      s.running = true;
      erase_id(waiting_, s.id);
      running_.push_back(s.id);
      if (!s.scheduled_once) {
        s.num_cached = a.num_cached;
        s.scheduled_time = std::chrono::steady_clock::now();
      }
    }
    s.fresh = false;
    s.num_computed = a.num_computed;
    s.in_flight = true;
    const bool completes = a.num_computed + a.chunk == static_cast<int>(s.tokens.size());
    const bool samples = completes && s.pooling == Pooling::none;
    const int first_row = plan.batch.num_tokens();
    plan.batch.add_sequence(std::span(s.tokens).subspan(a.num_computed, a.chunk), a.num_computed, a.block_table,
                            samples ? Logits::last : Logits::none);
    if (s.pooling == Pooling::mean) {
      for (int r = 0; r < a.chunk; ++r) plan.batch.embed_indices.push_back(first_row + r);
    } else if (s.pooling == Pooling::last && completes) {
      plan.batch.embed_indices.push_back(first_row + a.chunk - 1);
    }
    plan.embed.push_back(static_cast<uint8_t>(s.pooling));
    plan.completes.push_back(completes ? 1 : 0);
    plan.seqs.push_back(s.id);
    plan.chunk.push_back(a.chunk);
    plan.samples.push_back(samples ? 1 : 0);
    if (samples && !s.announced) {
      s.announced = true;
      plan.new_seqs.push_back({s.id, s.params, std::vector<int32_t>(s.tokens.begin(), s.tokens.begin() + s.prompt_len),
                               config_.eos_token_ids});
    }
  }
  ++in_flight_;
  return plan;
}

std::vector<SequenceUpdate> Scheduler::complete(const StepPlan& plan, const StepResult& result,
                                                std::vector<SeqId>& to_free, std::vector<BlockCommit>& commits) {
  if (!result.error.empty()) return fail(plan, to_free);
  --in_flight_;
  std::vector<SequenceUpdate> updates;
  size_t next_token = 0;
  for (size_t i = 0; i < plan.seqs.size(); ++i) {
    Sequence& s = seqs_.at(plan.seqs[i]);
    s.in_flight = false;
    const PooledEmbedding* pooled = nullptr;
    for (const PooledEmbedding& p : result.embeddings)
      if (p.seq == s.id) pooled = &p;
    const SampledToken* sampled = nullptr;
    if (plan.samples[i] && next_token < result.tokens.size() && result.tokens[next_token].seq == s.id)
      sampled = &result.tokens[next_token++];
    SequenceUpdate u;
    u.seq = s.id;
    u.num_prompt_tokens = s.prompt_len;
    u.num_cached_tokens = s.num_cached;
    u.first_scheduled = !s.scheduled_once;
    u.scheduled_time = s.scheduled_time;
    s.scheduled_once = true;
    bool gone = false;
    if (s.aborted) {
      u.aborted = true;
      gone = true;
    } else {
      const int before = s.num_computed;
      s.num_computed += plan.chunk[i];
      if (config_.prefix_caching && s.num_computed / config_.block_size > before / config_.block_size)
        commits.push_back({s.id, std::vector<int32_t>(s.tokens.begin(), s.tokens.begin() + s.num_computed), s.num_computed});
      if (pooled) {
        u.embedding = pooled->values;
        u.finish = FinishReason::stop;
        gone = true;
      } else if (sampled) {
        s.tokens.push_back(sampled->token);
        u.tokens.push_back(*sampled);
        u.finish = sampled->finish;
        if (u.finish == FinishReason::none && static_cast<int>(s.tokens.size()) >= config_.max_model_len)
          u.finish = FinishReason::length;
        gone = u.finish != FinishReason::none;
      }
    }
    u.num_output_tokens = static_cast<int>(s.tokens.size()) - s.prompt_len;
    if (gone) {
      to_free.push_back(s.id);
      if (s.announced) released_.push_back(s.id);
      erase_id(running_, s.id);
      seqs_.erase(s.id);
    }
    if (gone || !u.tokens.empty() || u.first_scheduled) updates.push_back(std::move(u));
  }
  return updates;
}

std::vector<SequenceUpdate> Scheduler::fail(const StepPlan& plan, std::vector<SeqId>& to_free) {
  --in_flight_;
  std::vector<SequenceUpdate> updates;
  for (SeqId id : plan.seqs) {
    auto it = seqs_.find(id);
    if (it == seqs_.end()) continue;
    SequenceUpdate u;
    u.seq = id;
    u.aborted = true;
    u.num_prompt_tokens = it->second.prompt_len;
    u.num_output_tokens = static_cast<int>(it->second.tokens.size()) - it->second.prompt_len;
    to_free.push_back(id);
    if (it->second.announced) released_.push_back(id);
    erase_id(running_, id);
    seqs_.erase(it);
    updates.push_back(std::move(u));
  }
  return updates;
}

std::vector<SequenceUpdate> Scheduler::fail_all(std::vector<SeqId>& to_free) {
  std::vector<SequenceUpdate> updates;
  for (const auto& [id, s] : seqs_) {
    SequenceUpdate u;
    u.seq = id;
    u.aborted = true;
    u.num_prompt_tokens = s.prompt_len;
    u.num_output_tokens = static_cast<int>(s.tokens.size()) - s.prompt_len;
    u.num_cached_tokens = s.num_cached;
    to_free.push_back(id);
    updates.push_back(std::move(u));
  }
  seqs_.clear();
  waiting_.clear();
  running_.clear();
  released_.clear();  // the samplers that held them are on the dead workers
  in_flight_ = 0;
  return updates;
}

}  // namespace troupe
