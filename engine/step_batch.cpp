#include "engine/step_batch.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace troupe {

void StepBatch::add_sequence(std::span<const int32_t> tokens, int start, std::span<const int32_t> block_table,
                             Logits logits) {
  const int n = static_cast<int>(tokens.size());
  const int end = start + n;
  if (n == 0) throw std::invalid_argument("StepBatch: a sequence needs at least one new token");
  if (static_cast<int64_t>(block_table.size()) * block_size < end)
    throw std::invalid_argument("StepBatch: block table of " + std::to_string(block_table.size()) +
                                " blocks cannot hold " + std::to_string(end) + " tokens");
  const int first_row = num_tokens();
  for (int i = 0; i < n; ++i) {
    const int pos = start + i;
    token_ids.push_back(tokens[i]);
    positions.push_back(pos);
    slot_mapping.push_back(block_table[pos / block_size] * block_size + pos % block_size);
  }
  query_start.push_back(num_tokens());
  context_lens.push_back(end);
  block_tables.emplace_back(block_table.begin(), block_table.end());
  if (logits == Logits::all) {
    for (int i = 0; i < n; ++i) logits_indices.push_back(first_row + i);
  } else if (logits == Logits::last) {
    logits_indices.push_back(first_row + n - 1);
  }
}

int StepBatch::max_query_len() const {
  int m = 0;
  for (size_t s = 0; s + 1 < query_start.size(); ++s) m = std::max(m, query_start[s + 1] - query_start[s]);
  return m;
}

int StepBatch::max_context_len() const {
  return context_lens.empty() ? 0 : *std::max_element(context_lens.begin(), context_lens.end());
}

int StepBatch::max_blocks_per_seq() const {
  size_t m = 0;
  for (const auto& t : block_tables) m = std::max(m, t.size());
  return static_cast<int>(m);
}

std::vector<int32_t> StepBatch::flat_block_tables() const {
  const int width = std::max(1, max_blocks_per_seq());
  std::vector<int32_t> flat(static_cast<size_t>(num_seqs()) * width, 0);
  for (int s = 0; s < num_seqs(); ++s) std::copy(block_tables[s].begin(), block_tables[s].end(), flat.begin() + s * width);
  return flat;
}

}  // namespace troupe
