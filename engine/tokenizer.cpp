#include "engine/tokenizer.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

#include "config/error.hpp"
#include "engine/added_tokens.hpp"
#include "engine/bpe.hpp"
#include "engine/tokenizer_json.hpp"
#include "engine/unicode.hpp"

namespace troupe {

namespace {

// A control character: outside the byte-level alphabet, no <0xNN> token, no space, no "▁".
constexpr std::string_view kWindowMarker = "\x01";

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw ConfigError("cannot read " + p.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// bos_token / eos_token in tokenizer_config.json: a string, or {"content": ...} in older files.
std::string config_token(const boost::json::object& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end()) return {};
  if (it->value().is_string()) return std::string(it->value().get_string());
  if (it->value().is_object()) {
    auto c = it->value().get_object().find("content");
    if (c != it->value().get_object().end() && c->value().is_string()) return std::string(c->value().get_string());
  }
  return {};
}

}  // namespace

struct Tokenizer::Impl {
  std::unique_ptr<Bpe> model;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<TokenDecoder> decoder;
  DecoderTraits traits;
  PostTemplate post;
  std::vector<AddedToken> added;                       // in file order
  std::unordered_map<int32_t, size_t> added_by_id;     // id -> index into added
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> added_by_content;
  std::unique_ptr<AddedTokenMatcher> raw_matcher;   // tokens with normalized: false
  std::unique_ptr<AddedTokenMatcher> norm_matcher;  // tokens with normalized: true
  std::vector<std::string> added_decoded;          // per added token: the string decode sees
  std::string bos_token, eos_token;
  size_t vocab_size = 0;

  void tokenize_plain(std::string_view text, bool at_origin, std::vector<int32_t>& out) const;
  void tokens_for(std::span<const int32_t> ids, bool skip_special, std::vector<std::string>& tokens) const;
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_file(const std::filesystem::path& tokenizer_json) {
  std::string text = read_file(tokenizer_json);
  try {
    return from_json(text);
  } catch (const ConfigError& e) {
    throw ConfigError(tokenizer_json.string() + ": " + e.what());
  }
}

Tokenizer Tokenizer::from_json(std::string_view json_text) {
  TokenizerSpec spec = parse_tokenizer_json(json_text);
  auto impl = std::make_unique<Impl>();
  impl->model = std::move(spec.model);
  impl->normalizer = std::move(spec.normalizer);
  impl->pre_tokenizer = std::move(spec.pre_tokenizer);
  impl->decoder = std::move(spec.decoder);
  impl->traits = spec.traits;
  impl->post = std::move(spec.post);
  impl->vocab_size = static_cast<size_t>(impl->model->max_id() + 1);
  for (AddedToken& a : spec.added) {
    if (a.content.empty()) continue;  // HF ignores empty added tokens
    if (auto it = impl->added_by_content.find(a.content); it != impl->added_by_content.end()) {
      // The same text added twice: the later entry replaces the earlier one.
      impl->added[impl->added_by_id.at(it->second)] = a;
    } else {
      impl->added_by_id[a.id] = impl->added.size();
      impl->added.push_back(a);
    }
    impl->added_by_content[a.content] = a.id;
    impl->vocab_size = std::max(impl->vocab_size, static_cast<size_t>(a.id) + 1);
  }
  std::vector<AddedToken> raw, norm;
  std::vector<std::string> raw_p, norm_p;
  impl->added_decoded.resize(impl->added.size());
  for (size_t i = 0; i < impl->added.size(); ++i) {
    const AddedToken& a = impl->added[i];
    impl->added_decoded[i] = a.content;
    if (a.normalized) {
      std::string p = a.content;
      if (impl->normalizer) impl->normalizer->apply(p);
      impl->added_decoded[i] = p;  // HF decodes a normalized added token as its normalized text
      norm.push_back(a);
      norm_p.push_back(std::move(p));
    } else {
      raw.push_back(a);
      raw_p.push_back(a.content);
    }
  }
  impl->raw_matcher = std::make_unique<AddedTokenMatcher>(std::move(raw), std::move(raw_p));
  impl->norm_matcher = std::make_unique<AddedTokenMatcher>(std::move(norm), std::move(norm_p));
  return Tokenizer(std::move(impl));
}
Tokenizer Tokenizer::from_model_dir(const std::filesystem::path& dir) {
  Tokenizer t = from_file(dir / "tokenizer.json");
  std::filesystem::path cfg_path = dir / "tokenizer_config.json";
  if (std::filesystem::exists(cfg_path)) {
    // Boost.JSON here: these configs hold integers past 64 bits (model_max_length), which simdjson
    // refuses.
    boost::system::error_code ec;
    boost::json::value cfg = boost::json::parse(read_file(cfg_path), ec);
    if (ec || !cfg.is_object()) throw ConfigError(cfg_path.string() + ": not a JSON object");
    t.impl_->bos_token = config_token(cfg.get_object(), "bos_token");
    t.impl_->eos_token = config_token(cfg.get_object(), "eos_token");
  }
  return t;
}

void Tokenizer::Impl::tokenize_plain(std::string_view text, bool at_origin, std::vector<int32_t>& out) const {
  std::vector<Piece> pieces;
  pieces.push_back(Piece{std::string(text), at_origin});
  if (pre_tokenizer) pre_tokenizer->apply(pieces);
  for (const Piece& p : pieces) model->tokenize(p.text, out);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  if (!unicode::is_valid(text)) throw std::invalid_argument("encode: text is not valid UTF-8");
  const Impl& m = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (add_special_tokens) out.insert(out.end(), m.post.before.begin(), m.post.before.end());

  std::vector<Segment> raw_segments, norm_segments;
  m.raw_matcher->split(text, raw_segments);
  for (const Segment& s : raw_segments) {
    if (s.id >= 0) {
      out.push_back(s.id);
      continue;
    }
    std::string normalized(text.substr(s.begin, s.end - s.begin));
    if (m.normalizer) m.normalizer->apply(normalized);
    norm_segments.clear();
    m.norm_matcher->split(normalized, norm_segments);
    for (const Segment& n : norm_segments) {
      if (n.id >= 0) {
        out.push_back(n.id);
      } else {
        m.tokenize_plain(std::string_view(normalized).substr(n.begin, n.end - n.begin), s.begin == 0 && n.begin == 0, out);
      }
    }
  }
  if (add_special_tokens) out.insert(out.end(), m.post.after.begin(), m.post.after.end());
  return out;
}

void Tokenizer::Impl::tokens_for(std::span<const int32_t> ids, bool skip_special, std::vector<std::string>& tokens) const {
  for (int32_t id : ids) {
    if (auto it = added_by_id.find(id); it != added_by_id.end()) {
      if (skip_special && added[it->second].special) continue;
      tokens.push_back(added_decoded[it->second]);
    } else if (const std::string* t = model->id_to_token(id)) {
      // HF skips by text: a model token spelled like a special token is skipped too.
      if (skip_special) {
        auto c = added_by_content.find(*t);
        if (c != added_by_content.end() && added[added_by_id.at(c->second)].special) continue;
      }
      tokens.push_back(*t);
    }
  }
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  impl_->tokens_for(ids, skip_special_tokens, tokens);
  if (!impl_->decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out += ' ';
      out += tokens[i];
    }
    return out;
  }
  impl_->decoder->apply(tokens);
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

size_t Tokenizer::count_tokens(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  impl_->tokens_for(ids, skip_special_tokens, tokens);
  return tokens.size();
}

std::string Tokenizer::decode_window(std::span<const int32_t> ids, bool tokens_before, bool text_before, bool skip_special_tokens,
                                     bool* final) const {
  std::vector<std::string> tokens;
  impl_->tokens_for(ids, skip_special_tokens, tokens);
  *final = true;
  if (tokens.empty()) return {};
  if (!impl_->decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i || tokens_before) out += ' ';
      out += tokens[i];
    }
    return out;
  }
  if (impl_->traits.byte_fallback) {
    const std::string& last = tokens.back();
    if (last.size() == 6 && last.compare(0, 3, "<0x") == 0 && last[5] == '>') *final = false;
  }
  if (impl_->traits.byte_level) {
    // The raw bytes the byte-level decoder will join: an unfinished character at their end means
    // the next ids decide how it reads.
    std::string bytes;
    for (const std::string& t : tokens) {
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
    if (unicode::complete_prefix(bytes) != bytes.size()) *final = false;
  }
  // A window that continues a stream goes behind a stand-in first token, so that decoders do not
  // take its first token for the stream's (Metaspace). After text, the stand-in is a marker that no
  // decoder alters and that is not a space, so that nothing is stripped as if it began the text
  // (Strip); the marker is cut off again.
  const bool marked = tokens_before && text_before;
  if (tokens_before) tokens.insert(tokens.begin(), marked ? std::string(kWindowMarker) : std::string());
  impl_->decoder->apply(tokens);
  std::string out;
  for (const std::string& t : tokens) out += t;
  if (marked) {
    if (out.compare(0, kWindowMarker.size(), kWindowMarker) != 0) throw std::logic_error("decode_window: decoder altered the window marker");
    out.erase(0, kWindowMarker.size());
  }
  return out;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto it = impl_->added_by_content.find(token); it != impl_->added_by_content.end()) return it->second;
  return impl_->model->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  if (auto it = impl_->added_by_id.find(id); it != impl_->added_by_id.end()) return impl_->added[it->second].content;
  if (const std::string* t = impl_->model->id_to_token(id)) return *t;
  return std::nullopt;
}

bool Tokenizer::is_special(int32_t id) const {
  auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && impl_->added[it->second].special;
}

size_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::bos_id() const {
  return impl_->bos_token.empty() ? std::nullopt : token_to_id(impl_->bos_token);
}

std::optional<int32_t> Tokenizer::eos_id() const {
  return impl_->eos_token.empty() ? std::nullopt : token_to_id(impl_->eos_token);
}

const std::string& Tokenizer::bos_token() const { return impl_->bos_token; }
const std::string& Tokenizer::eos_token() const { return impl_->eos_token; }

}  // namespace troupe
