// The prompts of `troupe bench serve`: vLLM's random dataset (lengths uniform around a target), a
// shared-prefix dataset (groups of prompts that begin with the same tokens, for prefix caching) and a
// multi-turn one (chats whose later turns carry the earlier replies). Prompts are token ids or text;
// text is random words whose token count the server's own tokenizer (its /tokenize route) checks,
// so a text prompt has the requested length in the server's tokens wherever the server can count.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace troupe {

enum class DatasetKind { random, shared_prefix, multi_turn };
enum class PromptFormat { ids, text };

struct DatasetOptions {
  DatasetKind kind = DatasetKind::random;
  PromptFormat format = PromptFormat::ids;  // multi-turn: ignored, chats are text
  int num_prompts = 1000;                   // requests in all (multi-turn: turns summed over chats)
  int input_len = 1024;                     // prompt tokens (shared-prefix: the suffix; multi-turn: each user turn)
  int output_len = 128;                     // max_tokens of each request
  double range_ratio = 0.0;                 // lengths uniform in [len·(1−r), len·(1+r)]
  int prefix_groups = 4;                    // shared-prefix: prompt i belongs to group i mod G
  int prefix_len = 256;                     // shared-prefix: tokens every prompt of a group starts with
  int turns = 3;                            // multi-turn: user turns per chat (the last chat may have fewer)
  int vocab_size = 10000;                   // ids format: ids uniform in [0, vocab_size)
  uint64_t seed = 0;
};

struct BenchPrompt {
  std::vector<int32_t> ids;  // ids format
  std::string text;          // text format; for a multi-turn chat, this turn's user message
  int prompt_len = 0;        // its tokens (ids, or as the server counted the text; words when it cannot)
  int output_len = 0;        // max_tokens
  int group = -1;            // shared-prefix: its group
};

// One chat of the multi-turn dataset, or one prompt (a single turn) of the others.
struct Conversation {
  std::vector<BenchPrompt> turns;
};

struct Dataset {
  std::vector<Conversation> conversations;
  bool chat = false;            // sent to /v1/chat/completions (multi-turn), else /v1/completions
  bool lengths_counted = true;  // false: text without a tokenizer to count it, one word taken as one token
  size_t num_requests() const;
};

// The server's token count of a text without special tokens, or nullopt when nothing can count it.
using TokenCounter = std::function<std::optional<int>(const std::string& text)>;

// vLLM's length range: [floor(len·(1−r)), ceil(len·(1+r))], at least 1.
std::pair<int, int> length_range(int len, double range_ratio);

// The dataset, the same for the same options and tokenizer (the seed drives every choice).
Dataset make_dataset(const DatasetOptions& options, const TokenCounter& count);

}  // namespace troupe
