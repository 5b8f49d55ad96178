#include "engine/token_decoder.hpp"

#include "engine/unicode.hpp"

namespace troupe {

namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

class ByteLevelDecoder final : public TokenDecoder {
 public:
  void apply(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      // A token whose characters are all byte-level characters stands for those bytes; any other
      // token (an added token such as "<|im_start|>" written in plain text) stands for itself.
      size_t mark = bytes.size();
      bool all = true;
      for (size_t i = 0; i < t.size() && all;) {
        int b = byte_level_byte(unicode::next(t, i));
        if (b < 0) {
          all = false;
        } else {
          bytes.push_back(static_cast<char>(b));
        }
      }
      if (!all) {
        bytes.resize(mark);
        bytes += t;
      }
    }
    tokens.assign(1, unicode::from_bytes_lossy(bytes));
  }
};

class ReplaceDecoder final : public TokenDecoder {
 public:
  ReplaceDecoder(std::string pattern, std::string content) : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void apply(std::vector<std::string>& tokens) const override {
    if (pattern_.empty()) return;
    for (std::string& t : tokens) {
      if (t.find(pattern_) == std::string::npos) continue;
      std::string out;
      size_t pos = 0;
      for (size_t at = t.find(pattern_); at != std::string::npos; at = t.find(pattern_, pos)) {
        out.append(t, pos, at - pos);
        out += content_;
        pos = at + pattern_.size();
      }
      out.append(t, pos);
      t = std::move(out);
    }
  }

 private:
  std::string pattern_, content_;
};

class ByteFallbackDecoder final : public TokenDecoder {
 public:
  void apply(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (unicode::is_valid(pending)) {
        out.push_back(pending);
      } else {
        // HF replaces an invalid run byte by byte, not by maximal subparts.
        for (size_t k = 0; k < pending.size(); ++k) out.emplace_back(kReplacementChar);
      }
      pending.clear();
    };
    for (std::string& t : tokens) {
      int byte = parse_byte_token(t);
      if (byte >= 0) {
        pending.push_back(static_cast<char>(byte));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }

 private:
  static int hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  static int parse_byte_token(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    int hi = hex(t[3]), lo = hex(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }
};

class FuseDecoder final : public TokenDecoder {
 public:
  void apply(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

class StripDecoder final : public TokenDecoder {
 public:
  StripDecoder(std::string content, size_t start, size_t stop) : content_(std::move(content)), start_(start), stop_(stop) {}
  void apply(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      std::u32string cps = unicode::to_u32(t);
      char32_t c = unicode::to_u32(content_).at(0);
      size_t b = 0, e = cps.size();
      for (size_t i = 0; i < start_ && i < cps.size() && cps[i] == c; ++i) b = i + 1;
      for (size_t i = 0; i < stop_ && i < cps.size() && cps[cps.size() - 1 - i] == c; ++i) e = cps.size() - 1 - i;
      t = e > b ? unicode::to_utf8(std::u32string_view(cps).substr(b, e - b)) : std::string();
    }
  }

 private:
  std::string content_;
  size_t start_, stop_;
};

class MetaspaceDecoder final : public TokenDecoder {
 public:
  MetaspaceDecoder(std::string replacement, PrependScheme scheme) : replacement_(std::move(replacement)), scheme_(scheme) {}
  void apply(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      if (t.find(replacement_) == std::string::npos) continue;
      // The first token loses its replacement characters (the prefix the pre-tokenizer added);
      // every other replacement character becomes a space.
      std::string with = i == 0 && scheme_ != PrependScheme::never ? std::string() : std::string(" ");
      std::string out;
      size_t pos = 0;
      for (size_t at = t.find(replacement_); at != std::string::npos; at = t.find(replacement_, pos)) {
        out.append(t, pos, at - pos);
        out += with;
        pos = at + replacement_.size();
      }
      out.append(t, pos);
      t = std::move(out);
    }
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
};

class SequenceDecoder final : public TokenDecoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<TokenDecoder>> steps) : steps_(std::move(steps)) {}
  void apply(std::vector<std::string>& tokens) const override {
    for (const auto& s : steps_) s->apply(tokens);
  }

 private:
  std::vector<std::unique_ptr<TokenDecoder>> steps_;
};

}  // namespace

std::unique_ptr<TokenDecoder> make_byte_level_decoder() { return std::make_unique<ByteLevelDecoder>(); }
std::unique_ptr<TokenDecoder> make_replace_decoder(std::string pattern, std::string content) {
  return std::make_unique<ReplaceDecoder>(std::move(pattern), std::move(content));
}
std::unique_ptr<TokenDecoder> make_byte_fallback_decoder() { return std::make_unique<ByteFallbackDecoder>(); }
std::unique_ptr<TokenDecoder> make_fuse_decoder() { return std::make_unique<FuseDecoder>(); }
std::unique_ptr<TokenDecoder> make_strip_decoder(std::string content, size_t start, size_t stop) {
  return std::make_unique<StripDecoder>(std::move(content), start, stop);
}
std::unique_ptr<TokenDecoder> make_metaspace_decoder(std::string replacement, PrependScheme scheme) {
  return std::make_unique<MetaspaceDecoder>(std::move(replacement), scheme);
}
std::unique_ptr<TokenDecoder> make_decoder_sequence(std::vector<std::unique_ptr<TokenDecoder>> steps) {
  return std::make_unique<SequenceDecoder>(std::move(steps));
}

}  // namespace troupe
