#include "tools/bench_dataset.hpp"

#include <algorithm>
#include <cmath>
#include <random>
#include <string_view>

namespace troupe {
namespace {

using Rng = std::mt19937_64;

// Common English words: most are one token in a byte-pair vocabulary when a space precedes them.
constexpr std::string_view kWords[] = {
    "the",    "of",     "and",    "to",     "in",     "is",     "it",     "that",   "for",    "was",    "on",
    "are",    "with",   "as",     "his",    "they",   "be",     "at",     "one",    "have",   "this",   "from",
    "or",     "had",    "by",     "word",   "but",    "what",   "some",   "we",     "can",    "out",    "other",
    "were",   "all",    "there",  "when",   "up",     "use",    "your",   "how",    "said",   "an",     "each",
    "she",    "which",  "do",     "their",  "time",   "if",     "will",   "way",    "about",  "many",   "then",
    "them",   "write",  "would",  "like",   "so",     "these",  "her",    "long",   "make",   "thing",  "see",
    "him",    "two",    "has",    "look",   "more",   "day",    "could",  "go",     "come",   "did",    "number",
    "sound",  "no",     "most",   "people", "my",     "over",   "know",   "water",  "than",   "call",   "first",
    "who",    "may",    "down",   "side",   "been",   "now",    "find",   "any",    "new",    "work",   "part",
    "take",   "get",    "place",  "made",   "live",   "where",  "after",  "back",   "little", "only",   "round",
    "man",    "year",   "came",   "show",   "every",  "good",   "me",     "give",   "our",    "under",  "name",
    "very",   "through", "just",  "form",   "great",  "think",  "say",    "help",   "low",    "line",   "before",
    "turn",   "cause",  "same",   "mean",   "move",   "right",  "boy",    "old",    "too",    "does",   "tell",
    "sentence", "set",  "three",  "want",   "air",    "well",   "also",   "play",   "small",  "end",    "put",
    "home",   "read",   "hand",   "port",   "large",  "spell",  "add",    "even",   "land",   "here",   "must",
    "big",    "high",   "such",   "follow", "act",    "why",    "ask",    "men",    "change", "went",   "light",
};
constexpr size_t kNumWords = sizeof kWords / sizeof kWords[0];

// Short endings that add one token or a few, tried in turn to close the last gap to the target.
constexpr std::string_view kFillers[] = {".", ",", " a", "!", ";", " I", "?", ":", "-"};

int uniform_int(Rng& rng, int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

class TextMaker {
 public:
  TextMaker(Rng& rng, const TokenCounter& count) : rng_(rng), count_(count), counted_(static_cast<bool>(count)) {}

  bool counted() const { return counted_; }

  // Random words whose count is `target` tokens where a tokenizer counts them: as many words as fit
  // (found by a search that starts from the words-per-token seen so far), then fillers. `leading_space`
  // starts the text with a space, so that it adds its own count when appended to another text.
  std::pair<std::string, int> make(int target, bool leading_space) {
    std::vector<std::string_view> words;
    auto join = [&](size_t n) {
      while (words.size() < n) words.push_back(kWords[std::uniform_int_distribution<size_t>(0, kNumWords - 1)(rng_)]);
      std::string s;
      for (size_t i = 0; i < n; ++i) {
        if (i > 0 || leading_space) s += ' ';
        s += words[i];
      }
      return s;
    };
    if (!counted_) return {join(static_cast<size_t>(target)), target};
    // lo words measure at most the target (lo_count), hi words more than it (hi == 0: not found yet).
    size_t lo = 0, hi = 0;
    int lo_count = 0;
    size_t n = std::max<size_t>(1, static_cast<size_t>(std::lround(target / tokens_per_word_)));
    for (int step = 0; step < 64; ++step) {
      const std::optional<int> c = count_(join(n));
      if (!c) {
        counted_ = false;  // no tokenizer: words from here on
        return {join(static_cast<size_t>(target)), target};
      }
      tokens_per_word_ = std::clamp(0.5 * tokens_per_word_ + 0.5 * static_cast<double>(*c) / n, 0.25, 16.0);
      if (*c <= target) {
        lo = n;
        lo_count = *c;
      } else {
        hi = n;
      }
      if (lo_count == target || (hi != 0 && hi == lo + 1)) break;
      const double gap = (target - *c) / tokens_per_word_;
      long next = static_cast<long>(n) + (gap > 0 ? std::max(1L, std::lround(gap)) : std::min(-1L, std::lround(gap)));
      if (hi != 0) next = std::clamp<long>(next, static_cast<long>(lo) + 1, static_cast<long>(hi) - 1);
      n = static_cast<size_t>(std::max(1L, next));
      if (n == lo || n == hi) n = (lo + hi) / 2;  // a repeated guess: bisect
    }
    std::string text = join(lo);
    int have = lo_count;
    for (int round = 0; have < target && round < 4 * target + 16; ++round) {
      bool grew = false;
      for (std::string_view f : kFillers) {
        const std::optional<int> c = count_(text + std::string(f));
        if (c && *c > have && *c <= target) {
          text += f;
          have = *c;
          grew = true;
          break;
        }
      }
      if (!grew) break;  // nothing closes the gap: the prompt stays a token or two short
    }
    return {text, have};
  }

 private:
  Rng& rng_;
  const TokenCounter& count_;
  bool counted_;
  double tokens_per_word_ = 1.0;
};

std::vector<int32_t> random_ids(Rng& rng, int n, int vocab) {
  std::uniform_int_distribution<int32_t> id(0, vocab - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& x : ids) x = id(rng);
  return ids;
}

}  // namespace

size_t Dataset::num_requests() const {
  size_t n = 0;
  for (const Conversation& c : conversations) n += c.turns.size();
  return n;
}

std::pair<int, int> length_range(int len, double range_ratio) {
  const int lo = static_cast<int>(std::floor(len * (1.0 - range_ratio)));
  const int hi = static_cast<int>(std::ceil(len * (1.0 + range_ratio)));
  return {std::max(1, lo), std::max(1, hi)};
}

Dataset make_dataset(const DatasetOptions& o, const TokenCounter& count) {
  Rng rng(o.seed);
  Dataset d;
  d.chat = o.kind == DatasetKind::multi_turn;
  const bool text = d.chat || o.format == PromptFormat::text;
  TextMaker maker(rng, count);
  const auto [in_lo, in_hi] = length_range(o.input_len, o.range_ratio);
  const auto [out_lo, out_hi] = length_range(o.output_len, o.range_ratio);
  // Lengths first, as vLLM draws them, then the contents.
  std::vector<int> in_lens(static_cast<size_t>(o.num_prompts)), out_lens(static_cast<size_t>(o.num_prompts));
  for (int& n : in_lens) n = uniform_int(rng, in_lo, in_hi);
  for (int& n : out_lens) n = uniform_int(rng, out_lo, out_hi);

  // Shared-prefix: each group's prefix, made once.
  std::vector<BenchPrompt> prefixes;
  if (o.kind == DatasetKind::shared_prefix) {
    for (int g = 0; g < o.prefix_groups; ++g) {
      BenchPrompt p;
      if (text) {
        std::tie(p.text, p.prompt_len) = maker.make(o.prefix_len, false);
      } else {
        p.ids = random_ids(rng, o.prefix_len, o.vocab_size);
        p.prompt_len = o.prefix_len;
      }
      prefixes.push_back(std::move(p));
    }
  }

  const int turns = d.chat ? std::max(1, o.turns) : 1;
  for (int i = 0; i < o.num_prompts; ++i) {
    BenchPrompt p;
    p.output_len = out_lens[static_cast<size_t>(i)];
    const int len = in_lens[static_cast<size_t>(i)];
    const BenchPrompt* prefix = nullptr;
    if (o.kind == DatasetKind::shared_prefix) {
      p.group = i % o.prefix_groups;
      prefix = &prefixes[static_cast<size_t>(p.group)];
    }
    if (text) {
      auto [body, n] = maker.make(len, prefix != nullptr && !prefix->text.empty());
      p.text = prefix ? prefix->text + body : std::move(body);
      p.prompt_len = n + (prefix ? prefix->prompt_len : 0);
    } else {
      if (prefix) p.ids = prefix->ids;
      const std::vector<int32_t> suffix = random_ids(rng, len, o.vocab_size);
      p.ids.insert(p.ids.end(), suffix.begin(), suffix.end());
      p.prompt_len = static_cast<int>(p.ids.size());
    }
    if (i % turns == 0) d.conversations.emplace_back();
    d.conversations.back().turns.push_back(std::move(p));
  }
  d.lengths_counted = !text || maker.counted();
  return d;
}

}  // namespace troupe
