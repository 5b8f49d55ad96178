#include "engine/tokenizer.hpp"

#include <boost/json.hpp>
#include <simdjson.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

#include "config/error.hpp"
#include "engine/added_tokens.hpp"
#include "engine/bpe.hpp"
#include "engine/normalizer.hpp"
#include "engine/pretokenizer.hpp"
#include "engine/token_decoder.hpp"
#include "engine/unicode.hpp"

namespace troupe {

namespace {

using simdjson::dom::array;
using simdjson::dom::element;
using simdjson::dom::object;

// A control character: outside the byte-level alphabet, no <0xNN> token, no space, no "▁".
constexpr std::string_view kWindowMarker = "\x01";

[[noreturn]] void unsupported(const std::string& what) {
  throw ConfigError("tokenizer.json: unsupported " + what);
}

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw ConfigError("cannot read " + p.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool is_null_or_absent(const object& o, const char* key) {
  element e;
  return o[key].get(e) != simdjson::SUCCESS || e.is_null();
}

std::string str(const element& e, const std::string& what) {
  std::string_view s;
  if (e.get_string().get(s) != simdjson::SUCCESS) throw ConfigError("tokenizer.json: " + what + " must be a string");
  return std::string(s);
}

std::string str_field(const object& o, const char* key, const std::string& where) {
  element e;
  if (o[key].get(e) != simdjson::SUCCESS) throw ConfigError("tokenizer.json: " + where + " lacks '" + key + "'");
  return str(e, where + "." + key);
}

std::optional<std::string> opt_str_field(const object& o, const char* key) {
  element e;
  if (o[key].get(e) != simdjson::SUCCESS || e.is_null()) return std::nullopt;
  return str(e, key);
}

bool bool_field(const object& o, const char* key, bool fallback) {
  element e;
  if (o[key].get(e) != simdjson::SUCCESS || e.is_null()) return fallback;
  bool b;
  if (e.get_bool().get(b) != simdjson::SUCCESS) throw ConfigError(std::string("tokenizer.json: '") + key + "' must be true or false");
  return b;
}

int64_t int_field(const object& o, const char* key, const std::string& where) {
  element e;
  int64_t v;
  if (o[key].get(e) != simdjson::SUCCESS || e.get_int64().get(v) != simdjson::SUCCESS)
    throw ConfigError("tokenizer.json: " + where + " lacks integer '" + key + "'");
  return v;
}

object obj(const element& e, const std::string& what) {
  object o;
  if (e.get_object().get(o) != simdjson::SUCCESS) throw ConfigError("tokenizer.json: " + what + " must be an object");
  return o;
}

std::string type_of(const object& o, const std::string& what) { return str_field(o, "type", what); }

// A Split / Replace pattern: {"String": s} or {"Regex": r}.
std::pair<bool, std::string> pattern_of(const object& o, const std::string& what) {
  element p;
  if (o["pattern"].get(p) != simdjson::SUCCESS) throw ConfigError("tokenizer.json: " + what + " lacks 'pattern'");
  object po = obj(p, what + ".pattern");
  element v;
  if (po["String"].get(v) == simdjson::SUCCESS) return {false, str(v, what + ".pattern.String")};
  if (po["Regex"].get(v) == simdjson::SUCCESS) return {true, str(v, what + ".pattern.Regex")};
  throw ConfigError("tokenizer.json: " + what + ".pattern must be {\"String\": ...} or {\"Regex\": ...}");
}

std::unique_ptr<Normalizer> load_normalizer(const object& o) {
  std::string type = type_of(o, "normalizer");
  if (type == "NFC") return make_unicode_normalizer(NormalForm::nfc);
  if (type == "NFD") return make_unicode_normalizer(NormalForm::nfd);
  if (type == "NFKC") return make_unicode_normalizer(NormalForm::nfkc);
  if (type == "NFKD") return make_unicode_normalizer(NormalForm::nfkd);
  if (type == "Prepend") return make_prepend(str_field(o, "prepend", "Prepend normalizer"));
  if (type == "Replace") {
    auto [regex, pattern] = pattern_of(o, "Replace normalizer");
    if (regex) unsupported("normalizer: Replace with a regex pattern ('" + pattern + "')");
    return make_replace(pattern, str_field(o, "content", "Replace normalizer"));
  }
  if (type == "Sequence") {
    element list;
    array a;
    if (o["normalizers"].get(list) != simdjson::SUCCESS || list.get_array().get(a) != simdjson::SUCCESS)
      throw ConfigError("tokenizer.json: Sequence normalizer lacks 'normalizers'");
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (element e : a) steps.push_back(load_normalizer(obj(e, "normalizer")));
    return make_normalizer_sequence(std::move(steps));
  }
  unsupported("normalizer type '" + type + "'");
}

SplitBehavior behavior_of(const std::string& b) {
  if (b == "Isolated") return SplitBehavior::isolated;
  if (b == "Removed") return SplitBehavior::removed;
  if (b == "MergedWithPrevious") return SplitBehavior::merged_with_previous;
  if (b == "MergedWithNext") return SplitBehavior::merged_with_next;
  if (b == "Contiguous") return SplitBehavior::contiguous;
  unsupported("Split behavior '" + b + "'");
}

PrependScheme metaspace_scheme(const object& o) {
  std::string s = opt_str_field(o, "prepend_scheme").value_or("always");
  PrependScheme scheme;
  if (s == "always") {
    scheme = PrependScheme::always;
  } else if (s == "first") {
    scheme = PrependScheme::first;
  } else if (s == "never") {
    scheme = PrependScheme::never;
  } else {
    unsupported("Metaspace prepend_scheme '" + s + "'");
  }
  // Older files spell "never" as add_prefix_space: false.
  element aps;
  bool b;
  if (o["add_prefix_space"].get(aps) == simdjson::SUCCESS && aps.get_bool().get(b) == simdjson::SUCCESS && !b) {
    if (scheme != PrependScheme::never && !is_null_or_absent(o, "prepend_scheme"))
      throw ConfigError("tokenizer.json: Metaspace add_prefix_space does not match its prepend_scheme");
    scheme = PrependScheme::never;
  }
  return scheme;
}

std::string metaspace_replacement(const object& o) {
  std::string r = str_field(o, "replacement", "Metaspace");
  if (unicode::to_u32(r).size() != 1) throw ConfigError("tokenizer.json: Metaspace replacement must be one character");
  return r;
}

std::unique_ptr<PreTokenizer> load_pretokenizer(const object& o) {
  std::string type = type_of(o, "pre_tokenizer");
  if (type == "Split") {
    auto [regex, pattern] = pattern_of(o, "Split pre-tokenizer");
    SplitBehavior behavior = behavior_of(str_field(o, "behavior", "Split pre-tokenizer"));
    bool invert = bool_field(o, "invert", false);
    if (!regex) return make_literal_split(pattern, behavior, invert);
    SplitPattern p;
    if (!recognize_split_pattern(pattern, &p)) unsupported("Split regex '" + pattern + "' (supported: the GPT-2, Qwen2 and Llama 3 patterns)");
    return make_split(p, behavior, invert);
  }
  if (type == "ByteLevel") return make_byte_level(bool_field(o, "add_prefix_space", true), bool_field(o, "use_regex", true));
  if (type == "Metaspace") return make_metaspace(metaspace_replacement(o), metaspace_scheme(o), bool_field(o, "split", true));
  if (type == "Sequence") {
    element list;
    array a;
    if (o["pretokenizers"].get(list) != simdjson::SUCCESS || list.get_array().get(a) != simdjson::SUCCESS)
      throw ConfigError("tokenizer.json: Sequence pre-tokenizer lacks 'pretokenizers'");
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (element e : a) steps.push_back(load_pretokenizer(obj(e, "pre_tokenizer")));
    return make_sequence(std::move(steps));
  }
  unsupported("pre_tokenizer type '" + type + "'");
}

// What the decoder chain needs the streaming decoder to know about.
struct DecoderTraits {
  bool byte_level = false;     // bytes reassembled across tokens: a window may end mid-character
  bool byte_fallback = false;  // <0xNN> runs are resolved as a whole
};

std::unique_ptr<TokenDecoder> load_decoder(const object& o, DecoderTraits& traits) {
  std::string type = type_of(o, "decoder");
  if (type == "ByteLevel") {
    traits.byte_level = true;
    return make_byte_level_decoder();
  }
  if (type == "Replace") {
    auto [regex, pattern] = pattern_of(o, "Replace decoder");
    if (regex) unsupported("decoder: Replace with a regex pattern ('" + pattern + "')");
    return make_replace_decoder(pattern, str_field(o, "content", "Replace decoder"));
  }
  if (type == "ByteFallback") {
    traits.byte_fallback = true;
    return make_byte_fallback_decoder();
  }
  if (type == "Fuse") return make_fuse_decoder();
  if (type == "Strip") {
    std::string content = str_field(o, "content", "Strip decoder");
    if (unicode::to_u32(content).size() != 1) throw ConfigError("tokenizer.json: Strip decoder content must be one character");
    int64_t start = int_field(o, "start", "Strip decoder"), stop = int_field(o, "stop", "Strip decoder");
    if (start < 0 || stop < 0) throw ConfigError("tokenizer.json: Strip decoder start/stop must not be negative");
    if (start > 1 || stop > 0) unsupported("decoder: Strip other than of one leading character (start " + std::to_string(start) + ", stop " + std::to_string(stop) + ")");
    return make_strip_decoder(content, static_cast<size_t>(start), static_cast<size_t>(stop));
  }
  if (type == "Metaspace") return make_metaspace_decoder(metaspace_replacement(o), metaspace_scheme(o));
  if (type == "Sequence") {
    element list;
    array a;
    if (o["decoders"].get(list) != simdjson::SUCCESS || list.get_array().get(a) != simdjson::SUCCESS)
      throw ConfigError("tokenizer.json: Sequence decoder lacks 'decoders'");
    std::vector<std::unique_ptr<TokenDecoder>> steps;
    for (element e : a) steps.push_back(load_decoder(obj(e, "decoder"), traits));
    return make_decoder_sequence(std::move(steps));
  }
  unsupported("decoder type '" + type + "'");
}

// The ids a post-processor puts around a single sequence: `before`, the text's ids, `after`.
struct Template {
  std::vector<int32_t> before, after;
};

void load_post_processor(const object& o, Template& t) {
  std::string type = type_of(o, "post_processor");
  if (type == "ByteLevel") return;  // offsets only; ids are untouched
  if (type == "Sequence") {
    element list;
    array a;
    if (o["processors"].get(list) != simdjson::SUCCESS || list.get_array().get(a) != simdjson::SUCCESS)
      throw ConfigError("tokenizer.json: Sequence post_processor lacks 'processors'");
    for (element e : a) load_post_processor(obj(e, "post_processor"), t);
    return;
  }
  if (type != "TemplateProcessing") unsupported("post_processor type '" + type + "'");
  if (!t.before.empty() || !t.after.empty()) unsupported("post_processor: more than one TemplateProcessing");
  std::unordered_map<std::string, std::vector<int32_t>> specials;
  element sp;
  object spo;
  if (o["special_tokens"].get(sp) == simdjson::SUCCESS && sp.get_object().get(spo) == simdjson::SUCCESS) {
    for (auto [key, value] : spo) {
      object v = obj(value, "TemplateProcessing special token");
      element ids;
      array ida;
      if (v["ids"].get(ids) != simdjson::SUCCESS || ids.get_array().get(ida) != simdjson::SUCCESS)
        throw ConfigError("tokenizer.json: TemplateProcessing special token lacks 'ids'");
      std::vector<int32_t>& out = specials[std::string(key)];
      for (element id : ida) {
        int64_t x;
        if (id.get_int64().get(x) != simdjson::SUCCESS) throw ConfigError("tokenizer.json: TemplateProcessing ids must be integers");
        out.push_back(static_cast<int32_t>(x));
      }
    }
  }
  element single;
  array sa;
  if (o["single"].get(single) != simdjson::SUCCESS || single.get_array().get(sa) != simdjson::SUCCESS)
    throw ConfigError("tokenizer.json: TemplateProcessing lacks 'single'");
  bool seen_sequence = false;
  auto special = [&](const std::string& name) {
    auto it = specials.find(name);
    if (it == specials.end()) throw ConfigError("tokenizer.json: TemplateProcessing uses undeclared special token '" + name + "'");
    auto& dst = seen_sequence ? t.after : t.before;
    dst.insert(dst.end(), it->second.begin(), it->second.end());
  };
  for (element piece : sa) {
    std::string_view s;
    if (piece.get_string().get(s) == simdjson::SUCCESS) {  // the "$A" / "<s>" shorthand
      if (!s.empty() && s[0] == '$') {
        seen_sequence = true;
      } else {
        special(std::string(s));
      }
      continue;
    }
    object po = obj(piece, "TemplateProcessing piece");
    element inner;
    if (po["Sequence"].get(inner) == simdjson::SUCCESS) {
      if (seen_sequence) unsupported("post_processor: TemplateProcessing 'single' with two sequences");
      seen_sequence = true;
    } else if (po["SpecialToken"].get(inner) == simdjson::SUCCESS) {
      special(str_field(obj(inner, "SpecialToken"), "id", "SpecialToken"));
    } else {
      throw ConfigError("tokenizer.json: TemplateProcessing piece must be Sequence or SpecialToken");
    }
  }
  if (!seen_sequence) throw ConfigError("tokenizer.json: TemplateProcessing 'single' has no sequence");
}

std::unique_ptr<Bpe> load_model(const object& m) {
  element te;
  std::string type = "BPE";
  if (m["type"].get(te) == simdjson::SUCCESS) type = str(te, "model.type");
  if (type != "BPE") unsupported("model type '" + type + "' (supported: BPE)");
  element dropout;
  double d;
  if (m["dropout"].get(dropout) == simdjson::SUCCESS && !dropout.is_null() && dropout.get_double().get(d) == simdjson::SUCCESS && d != 0.0)
    unsupported("model: BPE dropout");

  BpeOptions opts;
  opts.unk_token = opt_str_field(m, "unk_token");
  opts.continuing_subword_prefix = opt_str_field(m, "continuing_subword_prefix");
  opts.end_of_word_suffix = opt_str_field(m, "end_of_word_suffix");
  opts.fuse_unk = bool_field(m, "fuse_unk", false);
  opts.byte_fallback = bool_field(m, "byte_fallback", false);
  opts.ignore_merges = bool_field(m, "ignore_merges", false);

  element ve;
  object vo;
  if (m["vocab"].get(ve) != simdjson::SUCCESS || ve.get_object().get(vo) != simdjson::SUCCESS)
    throw ConfigError("tokenizer.json: model.vocab must be an object of token -> id");
  Vocab vocab;
  vocab.reserve(vo.size());
  for (auto [key, value] : vo) {
    int64_t id;
    if (value.get_int64().get(id) != simdjson::SUCCESS || id < 0 || id > INT32_MAX)
      throw ConfigError("tokenizer.json: model.vocab ids must be non-negative integers");
    vocab[std::string(key)] = static_cast<int32_t>(id);
  }

  element me;
  array ma;
  if (m["merges"].get(me) != simdjson::SUCCESS || me.get_array().get(ma) != simdjson::SUCCESS)
    throw ConfigError("tokenizer.json: model.merges must be a list");
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(ma.size());
  size_t rank = 0;
  for (element e : ma) {
    ++rank;
    std::string_view s;
    array pair;
    if (e.get_string().get(s) == simdjson::SUCCESS) {  // "a b"
      size_t sp = s.find(' ');
      if (sp == std::string_view::npos || s.find(' ', sp + 1) != std::string_view::npos)
        throw ConfigError("tokenizer.json: merge " + std::to_string(rank) + " is not of the form \"a b\"");
      merges.emplace_back(std::string(s.substr(0, sp)), std::string(s.substr(sp + 1)));
    } else if (e.get_array().get(pair) == simdjson::SUCCESS && pair.size() == 2) {  // ["a", "b"]
      merges.emplace_back(str(pair.at(0).value(), "merge"), str(pair.at(1).value(), "merge"));
    } else {
      throw ConfigError("tokenizer.json: merge " + std::to_string(rank) + " must be \"a b\" or [\"a\", \"b\"]");
    }
  }
  return std::make_unique<Bpe>(std::move(vocab), merges, std::move(opts));
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
  Template post;
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
  simdjson::dom::parser parser;
  simdjson::padded_string padded(json_text);
  element root;
  if (auto err = parser.parse(padded).get(root)) throw ConfigError(std::string("tokenizer.json: not valid JSON: ") + simdjson::error_message(err));
  object o = obj(root, "the top level");
  auto impl = std::make_unique<Impl>();

  if (!is_null_or_absent(o, "truncation")) unsupported("truncation (set it to null)");
  if (!is_null_or_absent(o, "padding")) unsupported("padding (set it to null)");
  element model;
  if (o["model"].get(model) != simdjson::SUCCESS) throw ConfigError("tokenizer.json: no 'model'");
  impl->model = load_model(obj(model, "model"));
  element e;
  if (!is_null_or_absent(o, "normalizer") && o["normalizer"].get(e) == simdjson::SUCCESS) impl->normalizer = load_normalizer(obj(e, "normalizer"));
  if (!is_null_or_absent(o, "pre_tokenizer") && o["pre_tokenizer"].get(e) == simdjson::SUCCESS)
    impl->pre_tokenizer = load_pretokenizer(obj(e, "pre_tokenizer"));
  if (!is_null_or_absent(o, "decoder") && o["decoder"].get(e) == simdjson::SUCCESS) impl->decoder = load_decoder(obj(e, "decoder"), impl->traits);
  if (!is_null_or_absent(o, "post_processor") && o["post_processor"].get(e) == simdjson::SUCCESS)
    load_post_processor(obj(e, "post_processor"), impl->post);

  impl->vocab_size = static_cast<size_t>(impl->model->max_id() + 1);
  array at;
  if (o["added_tokens"].get(e) == simdjson::SUCCESS && e.get_array().get(at) == simdjson::SUCCESS) {
    for (element t : at) {
      object to = obj(t, "added token");
      AddedToken a;
      int64_t id = int_field(to, "id", "added token");
      if (id < 0 || id > INT32_MAX) throw ConfigError("tokenizer.json: added token id out of range");
      a.id = static_cast<int32_t>(id);
      a.content = str_field(to, "content", "added token");
      a.special = bool_field(to, "special", false);
      a.lstrip = bool_field(to, "lstrip", false);
      a.rstrip = bool_field(to, "rstrip", false);
      a.single_word = bool_field(to, "single_word", false);
      a.normalized = bool_field(to, "normalized", !a.special);
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
