#include "engine/bpe.hpp"

#include <queue>

#include "config/error.hpp"
#include "engine/unicode.hpp"

namespace troupe {

namespace {

// HF caches words shorter than this many bytes, in a cache of this many entries.
constexpr size_t kCacheMaxWordBytes = 256;
constexpr size_t kCacheCapacity = 1 << 16;

struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  uint32_t len;  // bytes covered; 0 once merged into its left neighbour
};

struct Candidate {
  uint32_t rank;
  int32_t pos;
  int32_t new_id;
};
// The queue's top is the lowest rank, and among equal ranks the leftmost pair.
struct CandidateAfter {
  bool operator()(const Candidate& a, const Candidate& b) const {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  }
};

}  // namespace

Bpe::Bpe(Vocab vocab, const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options)
    : vocab_(std::move(vocab)), options_(std::move(options)) {
  int32_t max_id = -1;
  for (const auto& [tok, id] : vocab_) {
    if (id < 0) throw ConfigError("tokenizer.json: negative id " + std::to_string(id) + " in the BPE vocabulary");
    max_id = std::max(max_id, id);
  }
  vocab_r_.assign(static_cast<size_t>(max_id + 1), nullptr);
  for (const auto& [tok, id] : vocab_) vocab_r_[static_cast<size_t>(id)] = &tok;

  const size_t prefix_len = options_.continuing_subword_prefix ? options_.continuing_subword_prefix->size() : 0;
  auto need = [&](const std::string& t) {
    auto it = vocab_.find(t);
    if (it == vocab_.end()) throw ConfigError("tokenizer.json: merge uses '" + t + "', which is not in the vocabulary");
    return it->second;
  };
  merges_.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto& [a, b] = merges[i];
    int32_t ia = need(a), ib = need(b);
    if (b.size() < prefix_len) throw ConfigError("tokenizer.json: merge part '" + b + "' is shorter than the subword prefix");
    int32_t merged = need(a + b.substr(prefix_len));
    // A repeated pair keeps its last rank, as a map built in file order would.
    merges_[pair_key(ia, ib)] = Merge{static_cast<uint32_t>(i), merged};
  }
  if (options_.unk_token) {
    auto it = vocab_.find(*options_.unk_token);
    if (it != vocab_.end()) unk_id_ = it->second;
  }
  byte_ids_.fill(-1);
  if (options_.byte_fallback) {
    static const char* hex = "0123456789ABCDEF";
    for (int b = 0; b < 256; ++b) {
      std::string name = "<0x";
      name += hex[b >> 4];
      name += hex[b & 15];
      name += '>';
      auto it = vocab_.find(name);
      if (it != vocab_.end()) byte_ids_[static_cast<size_t>(b)] = it->second;
    }
  }
}

std::optional<int32_t> Bpe::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* Bpe::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= vocab_r_.size()) return nullptr;
  return vocab_r_[static_cast<size_t>(id)];
}

void Bpe::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    // Llama 3: a pre-token that is itself a token is emitted whole, whatever the merges would do.
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() < kCacheMaxWordBytes;
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    if (auto it = cache_.find(word); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t start = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity) cache_.emplace(std::string(word), std::vector<int32_t>(out.begin() + static_cast<ptrdiff_t>(start), out.end()));
  }
}

void Bpe::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&](int32_t id, uint32_t len) {
    int32_t n = static_cast<int32_t>(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back(Symbol{id, n - 1, -1, len});
  };

  bool unk = false;  // an unknown run is pending
  uint32_t unk_len = 0;
  std::string buf;
  for (size_t i = 0; i < word.size();) {
    size_t b = i;
    i += unicode::sequence_length(static_cast<unsigned char>(word[i]));
    if (i > word.size()) i = word.size();
    std::string_view ch = word.substr(b, i - b);
    std::string_view s = ch;
    const bool first = b == 0, last = i == word.size();
    if ((!first && options_.continuing_subword_prefix) || (last && options_.end_of_word_suffix)) {
      buf.clear();
      if (!first && options_.continuing_subword_prefix) buf += *options_.continuing_subword_prefix;
      buf += ch;
      if (last && options_.end_of_word_suffix) buf += *options_.end_of_word_suffix;
      s = buf;
    }
    const uint32_t len = static_cast<uint32_t>(ch.size());
    if (auto it = vocab_.find(s); it != vocab_.end()) {
      if (unk) {
        add(*unk_id_, unk_len);
        unk = false;
      }
      add(it->second, len);
      continue;
    }
    if (options_.byte_fallback) {
      bool all = true;
      for (unsigned char c : s) all &= byte_ids_[c] >= 0;
      if (all) {
        // HF emits the bytes without first flushing a pending unknown run; so do we.
        for (unsigned char c : s) add(byte_ids_[c], 1);
        continue;
      }
    }
    if (options_.unk_token) {
      if (!unk_id_) throw ConfigError("tokenizer.json: unk_token '" + *options_.unk_token + "' is not in the vocabulary");
      if (unk && options_.fuse_unk) {
        unk_len += len;
      } else {
        if (unk) add(*unk_id_, unk_len);
        unk = true;
        unk_len = len;
      }
    }
  }
  if (unk) add(*unk_id_, unk_len);

  std::priority_queue<Candidate, std::vector<Candidate>, CandidateAfter> queue;
  for (size_t k = 0; k + 1 < symbols.size(); ++k) {
    auto it = merges_.find(pair_key(symbols[k].id, symbols[k + 1].id));
    if (it != merges_.end()) queue.push(Candidate{it->second.rank, static_cast<int32_t>(k), it->second.new_id});
  }
  while (!queue.empty()) {
    Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[static_cast<size_t>(top.pos)];
    if (left.len == 0 || left.next == -1) continue;
    Symbol right = symbols[static_cast<size_t>(left.next)];
    // Stale candidate: the pair at this position changed since it was queued.
    auto it = merges_.find(pair_key(left.id, right.id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;

    symbols[static_cast<size_t>(left.next)].len = 0;
    left.id = top.new_id;
    left.len += right.len;
    left.next = right.next;
    if (right.next >= 0) symbols[static_cast<size_t>(right.next)].prev = top.pos;

    if (left.prev >= 0) {
      const Symbol& p = symbols[static_cast<size_t>(left.prev)];
      if (auto m = merges_.find(pair_key(p.id, left.id)); m != merges_.end())
        queue.push(Candidate{m->second.rank, left.prev, m->second.new_id});
    }
    if (left.next >= 0) {
      const Symbol& n = symbols[static_cast<size_t>(left.next)];
      if (auto m = merges_.find(pair_key(left.id, n.id)); m != merges_.end())
        queue.push(Candidate{m->second.rank, top.pos, m->second.new_id});
    }
  }
  for (const Symbol& s : symbols)
    if (s.len != 0) out.push_back(s.id);
}

}  // namespace troupe
