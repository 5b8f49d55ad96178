// One engine step as the host builds it: the new tokens of several sequences, where their k and v go
// in the paged cache, and which rows need logits. The model uploads it as AttentionMetadata.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace troupe {

// Which of a sequence's new rows need logits.
enum class Logits : uint8_t { none, last, all };

struct StepBatch {
  int block_size = 16;
  std::vector<int32_t> token_ids;     // [T]
  std::vector<int32_t> positions;     // [T]
  std::vector<int32_t> slot_mapping;  // [T]
  std::vector<int32_t> query_start{0};  // [S + 1]
  std::vector<int32_t> context_lens;    // [S]
  std::vector<std::vector<int32_t>> block_tables;  // [S][blocks]
  std::vector<int32_t> logits_indices;  // rows of the batch whose logits are wanted, in order
  std::vector<int32_t> embed_indices;   // rows whose final hidden state is wanted (embeddings), in order

  // Appends a sequence whose tokens [start, start + tokens.size()) are computed this step; earlier
  // tokens are already in the cache. `block_table` must cover start + tokens.size() tokens. `logits`
  // says which of the new rows go into logits_indices.
  void add_sequence(std::span<const int32_t> tokens, int start, std::span<const int32_t> block_table,
                    Logits logits = Logits::last);

  int num_seqs() const { return static_cast<int>(context_lens.size()); }
  int num_tokens() const { return static_cast<int>(token_ids.size()); }
  int max_query_len() const;
  int max_context_len() const;
  int max_blocks_per_seq() const;
  // Block tables as one [S, max_blocks_per_seq] array, padded with block 0 (never read past a
  // sequence's context).
  std::vector<int32_t> flat_block_tables() const;
};

}  // namespace troupe
