#include "engine/pretokenizer.hpp"

#include <algorithm>
#include <array>
#include <cstdint>

#include "engine/unicode.hpp"

namespace troupe {

namespace {

constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

enum : uint8_t { kLetter = 1, kNumber = 2, kSpace = 4, kNewline = 8 };

uint8_t classify(char32_t c) {
  if (c < 0x80) {
    if (c == '\r' || c == '\n') return kSpace | kNewline;
    if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return kSpace;
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return kLetter;
    if (c >= '0' && c <= '9') return kNumber;
    return 0;
  }
  if (unicode::is_letter(c)) return kLetter;
  if (unicode::is_number(c)) return kNumber;
  if (unicode::is_white_space(c)) return kSpace;
  return 0;
}

// The text as code points with their classes and byte offsets (offs has one extra entry: the end).
struct Scanned {
  std::u32string cps;
  std::vector<uint8_t> cls;
  std::vector<size_t> offs;
};

void scan(std::string_view text, Scanned& s) {
  s.cps.clear();
  s.cls.clear();
  s.offs.clear();
  for (size_t i = 0; i < text.size();) {
    s.offs.push_back(i);
    char32_t c = unicode::next(text, i);
    s.cps.push_back(c);
    s.cls.push_back(classify(c));
  }
  s.offs.push_back(text.size());
}

// `'s|'t|'re|'ve|'m|'ll|'d`, optionally under (?i:...), which compares simple case folds: that is why
// "'ſ" (long s) counts as "'s" in Oniguruma.
size_t match_contraction(const Scanned& s, size_t i, bool ignore_case) {
  static constexpr std::string_view suffixes[] = {"s", "t", "re", "ve", "m", "ll", "d"};
  const size_t n = s.cps.size();
  if (s.cps[i] != U'\'') return 0;
  for (std::string_view suf : suffixes) {
    if (i + 1 + suf.size() > n) continue;
    bool ok = true;
    for (size_t k = 0; k < suf.size() && ok; ++k) {
      char32_t c = s.cps[i + 1 + k];
      ok = ignore_case ? unicode::fold_case(c) == static_cast<char32_t>(suf[k]) : c == static_cast<char32_t>(suf[k]);
    }
    if (ok) return i + 1 + suf.size();
  }
  return 0;
}

size_t run_of(const Scanned& s, size_t j, uint8_t cls_mask) {
  while (j < s.cps.size() && (s.cls[j] & cls_mask)) ++j;
  return j;
}

size_t run_of_other(const Scanned& s, size_t j) {  // [^\s\p{L}\p{N}]+
  while (j < s.cps.size() && s.cls[j] == 0) ++j;
  return j;
}

// `\s+(?!\S)|\s+` at a white-space character: the run, less its last character when a non-space
// follows and the run is longer than one (the lookahead backtracks by one).
size_t match_space_run(const Scanned& s, size_t i) {
  size_t j = run_of(s, i, kSpace);
  if (j == s.cps.size() || j - i == 1) return j;
  return j - 1;
}

// End (code point index) of the match at i, or i when no alternative matches there.
size_t match_gpt2(const Scanned& s, size_t i) {
  const size_t n = s.cps.size();
  if (size_t e = match_contraction(s, i, false)) return e;
  size_t k = s.cps[i] == U' ' ? i + 1 : i;
  if (k < n) {
    if (s.cls[k] & kLetter) return run_of(s, k, kLetter);
    if (s.cls[k] & kNumber) return run_of(s, k, kNumber);
    if (s.cls[k] == 0) return run_of_other(s, k);
  }
  if (s.cls[i] & kSpace) return match_space_run(s, i);
  return i;
}

size_t match_qwen_family(const Scanned& s, size_t i, size_t max_digits) {
  const size_t n = s.cps.size();
  const uint8_t c = s.cls[i];
  if (size_t e = match_contraction(s, i, true)) return e;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (c & kLetter) return run_of(s, i, kLetter);
  if (!(c & (kNewline | kNumber)) && i + 1 < n && (s.cls[i + 1] & kLetter)) return run_of(s, i + 1, kLetter);
  // \p{N} or \p{N}{1,3}
  if (c & kNumber) {
    size_t j = i + 1;
    while (j < n && j - i < max_digits && (s.cls[j] & kNumber)) ++j;
    return j;
  }
  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  size_t k = s.cps[i] == U' ' ? i + 1 : i;
  if (k < n && s.cls[k] == 0) return run_of(s, run_of_other(s, k), kNewline);
  if (c & kSpace) {
    // \s*[\r\n]+ : the white-space run up to and including its last line break, if it has one.
    size_t j = run_of(s, i, kSpace);
    for (size_t m = j; m > i; --m) {
      if (s.cls[m - 1] & kNewline) return m;
    }
    return match_space_run(s, i);
  }
  return i;
}

}  // namespace

bool recognize_split_pattern(std::string_view regex, SplitPattern* out) {
  if (regex == kGpt2Regex) {
    *out = SplitPattern::gpt2;
  } else if (regex == kQwen2Regex) {
    *out = SplitPattern::qwen2;
  } else if (regex == kLlama3Regex) {
    *out = SplitPattern::llama3;
  } else {
    return false;
  }
  return true;
}

namespace {

void find_matches_scanned(SplitPattern p, const Scanned& s, std::vector<std::pair<size_t, size_t>>& out) {
  const size_t n = s.cps.size();
  for (size_t i = 0; i < n;) {
    size_t e = p == SplitPattern::gpt2 ? match_gpt2(s, i)
                                       : match_qwen_family(s, i, p == SplitPattern::qwen2 ? 1 : 3);
    if (e == i) {
      ++i;  // no match here: the search moves on, leaving this character to a gap
      continue;
    }
    out.emplace_back(s.offs[i], s.offs[e]);
    i = e;
  }
}

}  // namespace

void find_matches(SplitPattern p, std::string_view text, std::vector<std::pair<size_t, size_t>>& out) {
  Scanned s;
  scan(text, s);
  find_matches_scanned(p, s, out);
}

namespace {

// Turns matches into pieces the way HF's NormalizedString::split does for each behavior.
void split_by_matches(const Piece& piece, const std::vector<std::pair<size_t, size_t>>& matches, SplitBehavior behavior,
                      bool invert, std::vector<Piece>& out) {
  const std::string& text = piece.text;
  // (begin, end, is_match) covering the whole text, gaps included.
  struct Span {
    size_t b, e;
    bool match;
  };
  std::vector<Span> spans;
  size_t pos = 0;
  for (auto [b, e] : matches) {
    if (b > pos) spans.push_back({pos, b, invert});
    spans.push_back({b, e, !invert});
    pos = e;
  }
  if (pos < text.size()) spans.push_back({pos, text.size(), invert});

  std::vector<std::pair<size_t, size_t>> keep;
  switch (behavior) {
    case SplitBehavior::isolated:
      for (const Span& s : spans) keep.emplace_back(s.b, s.e);
      break;
    case SplitBehavior::removed:
      for (const Span& s : spans)
        if (!s.match) keep.emplace_back(s.b, s.e);
      break;
    case SplitBehavior::contiguous: {
      bool prev = false;
      for (const Span& s : spans) {
        if (!keep.empty() && s.match == prev) {
          keep.back().second = s.e;
        } else {
          keep.emplace_back(s.b, s.e);
        }
        prev = s.match;
      }
      break;
    }
    case SplitBehavior::merged_with_previous: {
      bool prev = false;
      for (const Span& s : spans) {
        if (s.match && !prev && !keep.empty()) {
          keep.back().second = s.e;
        } else {
          keep.emplace_back(s.b, s.e);
        }
        prev = s.match;
      }
      break;
    }
    case SplitBehavior::merged_with_next: {
      bool prev = false;
      for (size_t k = spans.size(); k-- > 0;) {
        const Span& s = spans[k];
        if (s.match && !prev && !keep.empty()) {
          keep.back().first = s.b;
        } else {
          keep.emplace_back(s.b, s.e);
        }
        prev = s.match;
      }
      std::reverse(keep.begin(), keep.end());
      break;
    }
  }
  for (auto [b, e] : keep) {
    if (e > b) out.push_back({text.substr(b, e - b), piece.at_origin && b == 0});
  }
}

class Split final : public PreTokenizer {
 public:
  Split(SplitPattern p, SplitBehavior b, bool invert) : pattern_(p), behavior_(b), invert_(invert) {}
  void apply(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces.size() * 4);
    Scanned s;
    std::vector<std::pair<size_t, size_t>> matches;
    for (const Piece& p : pieces) {
      scan(p.text, s);
      matches.clear();
      find_matches_scanned(pattern_, s, matches);
      split_by_matches(p, matches, behavior_, invert_, out);
    }
    pieces = std::move(out);
  }

 private:
  SplitPattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

class LiteralSplit final : public PreTokenizer {
 public:
  LiteralSplit(std::string lit, SplitBehavior b, bool invert) : literal_(std::move(lit)), behavior_(b), invert_(invert) {}
  void apply(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    std::vector<std::pair<size_t, size_t>> matches;
    for (const Piece& p : pieces) {
      matches.clear();
      if (!literal_.empty()) {
        for (size_t at = p.text.find(literal_); at != std::string::npos; at = p.text.find(literal_, at + literal_.size()))
          matches.emplace_back(at, at + literal_.size());
      }
      split_by_matches(p, matches, behavior_, invert_, out);
    }
    pieces = std::move(out);
  }

 private:
  std::string literal_;
  SplitBehavior behavior_;
  bool invert_;
};

struct ByteLevelTables {
  std::array<std::string, 256> chars;
  std::array<int16_t, 512> bytes;  // indexed by code point; all byte-level characters are below 512
  ByteLevelTables() {
    bytes.fill(-1);
    // Printable Latin-1 stands for itself; the other bytes take 256, 257, ... in byte order.
    auto self = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      char32_t c = self(b) ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      unicode::append(chars[b], c);
      bytes[c] = static_cast<int16_t>(b);
    }
  }
};

const ByteLevelTables& byte_tables() {
  static const ByteLevelTables t;
  return t;
}

class ByteLevel final : public PreTokenizer {
 public:
  ByteLevel(bool add_prefix_space, bool use_regex) : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {}
  void apply(std::vector<Piece>& pieces) const override {
    if (add_prefix_space_) {
      for (Piece& p : pieces)
        if (p.text.empty() || p.text[0] != ' ') p.text.insert(0, 1, ' ');
    }
    if (use_regex_) Split(SplitPattern::gpt2, SplitBehavior::isolated, false).apply(pieces);
    const ByteLevelTables& t = byte_tables();
    for (Piece& p : pieces) {
      std::string mapped;
      mapped.reserve(p.text.size() * 2);
      for (unsigned char b : p.text) mapped += t.chars[b];
      p.text = std::move(mapped);
    }
  }

 private:
  bool add_prefix_space_;
  bool use_regex_;
};

class Metaspace final : public PreTokenizer {
 public:
  Metaspace(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
  void apply(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    for (Piece& p : pieces) {
      std::string r;
      r.reserve(p.text.size() + replacement_.size());
      for (char c : p.text) {
        if (c == ' ') {
          r += replacement_;
        } else {
          r.push_back(c);
        }
      }
      bool starts = r.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts && (scheme_ == PrependScheme::always || (scheme_ == PrependScheme::first && p.at_origin)))
        r.insert(0, replacement_);
      Piece q{std::move(r), p.at_origin};
      if (split_) {
        std::vector<std::pair<size_t, size_t>> matches;
        for (size_t at = q.text.find(replacement_); at != std::string::npos; at = q.text.find(replacement_, at + replacement_.size()))
          matches.emplace_back(at, at + replacement_.size());
        split_by_matches(q, matches, SplitBehavior::merged_with_next, false, out);
      } else if (!q.text.empty()) {
        out.push_back(std::move(q));
      }
    }
    pieces = std::move(out);
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class Sequence final : public PreTokenizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  void apply(std::vector<Piece>& pieces) const override {
    for (const auto& s : steps_) s->apply(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

}  // namespace

const std::string& byte_level_char(unsigned char b) { return byte_tables().chars[b]; }

int byte_level_byte(char32_t c) { return c < 512 ? byte_tables().bytes[c] : -1; }

std::unique_ptr<PreTokenizer> make_split(SplitPattern pattern, SplitBehavior behavior, bool invert) {
  return std::make_unique<Split>(pattern, behavior, invert);
}
std::unique_ptr<PreTokenizer> make_literal_split(std::string literal, SplitBehavior behavior, bool invert) {
  return std::make_unique<LiteralSplit>(std::move(literal), behavior, invert);
}
std::unique_ptr<PreTokenizer> make_byte_level(bool add_prefix_space, bool use_regex) {
  return std::make_unique<ByteLevel>(add_prefix_space, use_regex);
}
std::unique_ptr<PreTokenizer> make_metaspace(std::string replacement, PrependScheme scheme, bool split) {
  return std::make_unique<Metaspace>(std::move(replacement), scheme, split);
}
std::unique_ptr<PreTokenizer> make_sequence(std::vector<std::unique_ptr<PreTokenizer>> steps) {
  return std::make_unique<Sequence>(std::move(steps));
}

}  // namespace troupe
