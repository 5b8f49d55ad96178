#include "engine/tokenizer_json.hpp"

#include <simdjson.h>

#include <unordered_map>

#include "config/error.hpp"
#include "engine/unicode.hpp"

namespace troupe {

namespace {

using simdjson::dom::array;
using simdjson::dom::element;
using simdjson::dom::object;

[[noreturn]] void unsupported(const std::string& what) {
  throw ConfigError("tokenizer.json: unsupported " + what);
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

void load_post_processor(const object& o, PostTemplate& t) {
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

}  // namespace

TokenizerSpec parse_tokenizer_json(std::string_view json_text) {
  simdjson::dom::parser parser;
  simdjson::padded_string padded(json_text);
  element root;
  if (auto err = parser.parse(padded).get(root)) throw ConfigError(std::string("tokenizer.json: not valid JSON: ") + simdjson::error_message(err));
  object o = obj(root, "the top level");
  TokenizerSpec spec;

  if (!is_null_or_absent(o, "truncation")) unsupported("truncation (set it to null)");
  if (!is_null_or_absent(o, "padding")) unsupported("padding (set it to null)");
  element model;
  if (o["model"].get(model) != simdjson::SUCCESS) throw ConfigError("tokenizer.json: no 'model'");
  spec.model = load_model(obj(model, "model"));
  element e;
  if (!is_null_or_absent(o, "normalizer") && o["normalizer"].get(e) == simdjson::SUCCESS) spec.normalizer = load_normalizer(obj(e, "normalizer"));
  if (!is_null_or_absent(o, "pre_tokenizer") && o["pre_tokenizer"].get(e) == simdjson::SUCCESS)
    spec.pre_tokenizer = load_pretokenizer(obj(e, "pre_tokenizer"));
  if (!is_null_or_absent(o, "decoder") && o["decoder"].get(e) == simdjson::SUCCESS) spec.decoder = load_decoder(obj(e, "decoder"), spec.traits);
  if (!is_null_or_absent(o, "post_processor") && o["post_processor"].get(e) == simdjson::SUCCESS)
    load_post_processor(obj(e, "post_processor"), spec.post);

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
      spec.added.push_back(std::move(a));
    }
  }
  return spec;
}

}  // namespace troupe
