#include "engine/step_inputs.hpp"

#include <algorithm>

namespace troupe {
namespace {

Tensor view(const Tensor& buffer, int64_t n) { return buffer.rows(0, n); }

}  // namespace

void StepInputBuffers::reserve(int tokens, int seqs, int blocks_per_seq) {
  if (tokens <= tokens_ && seqs <= seqs_ && blocks_per_seq <= blocks_) return;
  ++generation_;
  tokens_ = std::max({tokens, tokens_, 1});
  seqs_ = std::max({seqs, seqs_, 1});
  blocks_ = std::max({blocks_per_seq, blocks_, 1});
  auto i32 = [&](int64_t n) { return backend_.allocate({n}, DType::i32); };
  token_ids_ = i32(tokens_);
  positions_ = i32(tokens_);
  slots_ = i32(tokens_);
  logits_ = i32(tokens_);
  embeds_ = i32(tokens_);
  query_start_ = i32(seqs_ + 1);
  context_lens_ = i32(seqs_);
  block_tables_ = i32(static_cast<int64_t>(seqs_) * blocks_);
}

const StepInputs& StepInputBuffers::prepare(const StepBatch& batch, int64_t vocab_begin, int64_t vocab_end) {
  const int t = batch.num_tokens(), s = batch.num_seqs(), width = std::max(1, batch.max_blocks_per_seq());
  reserve(t, s, width);
  // Every copy is queued at the end, in one call: a decode step's seven small copies each cost the
  // GPU ~2 µs of its stream where the backend makes them one by one.
  uploads_.clear();
  auto put = [&](const std::vector<int32_t>& v, const Tensor& buffer) {
    Tensor dst = view(buffer, static_cast<int64_t>(v.size()));
    if (!v.empty()) uploads_.push_back({{v.data(), DType::i32, {static_cast<int64_t>(v.size())}}, dst});
    return dst;
  };
  local_ids_ = batch.token_ids;
  for (int32_t& id : local_ids_)
    id = (id >= vocab_begin && id < vocab_end) ? id - static_cast<int32_t>(vocab_begin) : -1;
  inputs_.token_ids = put(local_ids_, token_ids_);
  inputs_.logits_indices = put(batch.logits_indices, logits_);
  inputs_.embed_indices = put(batch.embed_indices, embeds_);
  inputs_.num_logits = static_cast<int>(batch.logits_indices.size());
  inputs_.num_embeds = static_cast<int>(batch.embed_indices.size());
  AttentionMetadata& m = inputs_.meta;
  m.positions = put(batch.positions, positions_);
  m.slot_mapping = put(batch.slot_mapping, slots_);
  m.query_start = put(batch.query_start, query_start_);
  m.context_lens = put(batch.context_lens, context_lens_);
  // The table keeps the buffer's row width, so its rows (and a captured graph's reads) stay put.
  tables_.assign(static_cast<size_t>(s) * blocks_, 0);
  for (int q = 0; q < s; ++q) std::copy(batch.block_tables[q].begin(), batch.block_tables[q].end(), tables_.begin() + q * blocks_);
  m.block_tables = put(tables_, block_tables_).reshape({s, blocks_});
  backend_.upload_all(uploads_);
  m.num_seqs = s;
  m.num_tokens = t;
  m.max_query_len = batch.max_query_len();
  m.max_context_len = batch.max_context_len();
  m.block_size = batch.block_size;
  return inputs_;
}

}  // namespace troupe
