#include "engine/decode_graphs.hpp"

#include <algorithm>

namespace troupe {

DecodeGraphs::DecodeGraphs(Model& model, int max_context_len, std::vector<int> sizes)
    : model_(model), max_context_len_(max_context_len), sizes_(std::move(sizes)) {}

namespace {

// `n` decode rows padded to `size` with sequences that read block 0 and write nowhere.
StepBatch padded(const StepBatch& batch, int size) {
  StepBatch out = batch;
  const int32_t no_block[] = {0};
  const int32_t token[] = {0};
  for (int i = batch.num_seqs(); i < size; ++i) {
    out.add_sequence(token, 0, no_block);
    out.slot_mapping.back() = -1;
  }
  return out;
}

}  // namespace

bool DecodeGraphs::capture(const KvCache& cache, int block_size) {
  if (unsupported_ || !model_.capturable()) return false;
  const int blocks = (max_context_len_ + block_size - 1) / block_size;
  model_.reserve_inputs(sizes_.back(), sizes_.back(), blocks);
  // Every size at once, largest first: kernels grow their scratch to the largest batch before any
  // smaller graph records a pointer into it. Each size runs eagerly once before its capture, so
  // kernels have set their attributes and the allocator holds the blocks the capture asks for.
  graphs_.clear();
  for (auto it = sizes_.rbegin(); it != sizes_.rend(); ++it) {
    StepBatch dummy;
    dummy.block_size = block_size;
    model_.prepare(padded(dummy, *it));
    model_.inputs().set_max_context_len(max_context_len_);
    model_.run(cache);
    if (!model_.backend().begin_capture()) {
      unsupported_ = true;
      graphs_.clear();
      return false;
    }
    Captured& c = graphs_[*it];
    c.logits = model_.run(cache);
    c.graph = model_.backend().end_capture();
    c.generation = model_.inputs().generation();
    c.workspace = model_.backend().workspace_generation();
    c.cache = cache.layers.front().k.data();
  }
  return true;
}

std::optional<Tensor> DecodeGraphs::forward(const StepBatch& batch, const KvCache& cache) {
  if (unsupported_ || !model_.capturable() || batch.num_seqs() == 0 || batch.max_query_len() != 1 ||
      !batch.embed_indices.empty() || static_cast<int>(batch.logits_indices.size()) != batch.num_seqs())
    return std::nullopt;
  const int n = batch.num_seqs();
  auto size_it = std::lower_bound(sizes_.begin(), sizes_.end(), n);
  if (size_it == sizes_.end()) return std::nullopt;
  const int blocks = (max_context_len_ + batch.block_size - 1) / batch.block_size;
  model_.reserve_inputs(sizes_.back(), sizes_.back(), blocks);
  // Scratch that moved since the capture (a batch larger than any reserved for) makes the graphs
  // stale too; every rank of a group sees the same shapes, so they capture again together.
  const bool stale = graphs_.empty() || graphs_.begin()->second.generation != model_.inputs().generation() ||
                     graphs_.begin()->second.workspace != model_.backend().workspace_generation() ||
                     graphs_.begin()->second.cache != cache.layers.front().k.data();
  if (stale && !capture(cache, batch.block_size)) return std::nullopt;
  model_.prepare(padded(batch, *size_it));
  const Captured& c = graphs_.at(*size_it);
  model_.backend().replay(c.graph);
  return c.logits.rows(0, n);
}

}  // namespace troupe
