#include "engine/added_tokens.hpp"

#include <algorithm>

#include "engine/unicode.hpp"

namespace troupe {

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens, std::vector<std::string> patterns)
    : tokens_(std::move(tokens)) {
  trie_.emplace_back();
  for (size_t t = 0; t < tokens_.size(); ++t) {
    const std::string& p = patterns[t];
    if (p.empty()) continue;
    first_byte_[static_cast<unsigned char>(p[0])] = true;
    int32_t node = 0;
    for (unsigned char b : p) {
      int32_t c = child(node, b);
      if (c < 0) {
        c = static_cast<int32_t>(trie_.size());
        trie_.emplace_back();
        auto& next = trie_[static_cast<size_t>(node)].next;
        next.insert(std::lower_bound(next.begin(), next.end(), std::make_pair(b, int32_t{-1})), {b, c});
      }
      node = c;
    }
    // Two tokens with the same text: the later one wins, as in HF's map from content to id.
    trie_[static_cast<size_t>(node)].token = static_cast<int32_t>(t);
  }
}

int32_t AddedTokenMatcher::child(int32_t node, unsigned char b) const {
  const auto& next = trie_[static_cast<size_t>(node)].next;
  auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(b, int32_t{-1}));
  return it != next.end() && it->first == b ? it->second : -1;
}

std::pair<int32_t, size_t> AddedTokenMatcher::longest_at(std::string_view text, size_t pos) const {
  std::pair<int32_t, size_t> best{-1, 0};
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    node = child(node, static_cast<unsigned char>(text[i]));
    if (node < 0) break;
    if (int32_t t = trie_[static_cast<size_t>(node)].token; t >= 0) best = {t, i + 1 - pos};
  }
  return best;
}

namespace {

// The last / first character of a string, for the \w and \s checks HF makes with Rust's regex.
char32_t last_char(std::string_view s) {
  size_t i = s.size();
  while (i > 0 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80) --i;
  if (i > 0) --i;
  return unicode::next(s, i);
}

}  // namespace

void AddedTokenMatcher::split(std::string_view text, std::vector<Segment>& out) const {
  if (text.empty()) return;
  if (tokens_.empty()) {
    out.push_back({0, text.size(), -1});
    return;
  }
  size_t start_offset = 0;
  // Matches are found left to right without overlap, each search resuming at the end of the
  // previous match (before any rstrip widening), as Aho-Corasick's find_iter does.
  for (size_t pos = 0; pos < text.size();) {
    if (!first_byte_[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    auto [t, len] = longest_at(text, pos);
    if (t < 0) {
      ++pos;
      continue;
    }
    const AddedToken& tok = tokens_[static_cast<size_t>(t)];
    size_t start = pos, stop = pos + len;
    pos = stop;
    if (tok.single_word) {
      bool start_space = start == 0 || !unicode::is_word(last_char(text.substr(0, start)));
      bool stop_space = stop == text.size() || [&] {
        size_t k = stop;
        return !unicode::is_word(unicode::next(text, k));
      }();
      if (!start_space || !stop_space) continue;
    }
    if (tok.lstrip) {
      size_t s = start;
      while (s > 0) {
        size_t k = s - 1;
        while (k > 0 && (static_cast<unsigned char>(text[k]) & 0xC0) == 0x80) --k;
        size_t kk = k;
        if (!unicode::is_white_space(unicode::next(text, kk))) break;
        s = k;
      }
      start = std::max(s, start_offset);
    }
    if (tok.rstrip) {
      while (stop < text.size()) {
        size_t k = stop;
        if (!unicode::is_white_space(unicode::next(text, k))) break;
        stop = k;
      }
    }
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, tok.id});
    start_offset = stop;
  }
  if (start_offset < text.size()) out.push_back({start_offset, text.size(), -1});
}

}  // namespace troupe
