#include "config/model_config.hpp"

#include <simdjson.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "config/error.hpp"

namespace troupe {
namespace {

using simdjson::dom::element;
using simdjson::dom::object;

struct Reader {
  object root;
  std::string source;

  [[noreturn]] void fail(const std::string& what) const {
    throw ConfigError(source + ": " + what);
  }
  bool has(const char* key) const {
    element e;
    return root[key].get(e) == simdjson::SUCCESS && !e.is_null();
  }
  element get(const char* key) const {
    element e;
    if (root[key].get(e) != simdjson::SUCCESS || e.is_null()) fail(std::string("missing required field '") + key + "'");
    return e;
  }
  static int64_t as_int(const element& e, const std::string& what, const Reader& r) {
    int64_t v;
    if (e.get_int64().get(v) == simdjson::SUCCESS) return v;
    uint64_t u;
    if (e.get_uint64().get(u) == simdjson::SUCCESS) return static_cast<int64_t>(u);
    r.fail("field '" + what + "' must be an integer");
  }
  int integer(const char* key) const {
    int64_t v = as_int(get(key), key, *this);
    if (v < 0 || v > (int64_t{1} << 31) - 1) fail(std::string("field '") + key + "' is out of range");
    return static_cast<int>(v);
  }
  int integer(const char* key, int fallback) const { return has(key) ? integer(key) : fallback; }
  int positive(const char* key) const {
    int v = integer(key);
    if (v <= 0) fail(std::string("field '") + key + "' must be positive, got " + std::to_string(v));
    return v;
  }
  double number(const element& e, const std::string& key) const {
    double d;
    if (e.get_double().get(d) == simdjson::SUCCESS) return d;
    return static_cast<double>(as_int(e, key, *this));
  }
  double number(const char* key, double fallback) const { return has(key) ? number(get(key), key) : fallback; }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    bool b;
    if (get(key).get_bool().get(b) != simdjson::SUCCESS) fail(std::string("field '") + key + "' must be true or false");
    return b;
  }
  std::string string(const char* key, std::string fallback) const {
    if (!has(key)) return fallback;
    std::string_view s;
    if (get(key).get_string().get(s) != simdjson::SUCCESS) fail(std::string("field '") + key + "' must be a string");
    return std::string(s);
  }
  // An id field that may be a single integer or a list (eos_token_id in Llama 3.1 configs).
  std::vector<int> ids(const char* key) const {
    std::vector<int> out;
    if (!has(key)) return out;
    element e = get(key);
    simdjson::dom::array arr;
    if (e.get_array().get(arr) == simdjson::SUCCESS) {
      for (element x : arr) out.push_back(static_cast<int>(as_int(x, key, *this)));
    } else {
      out.push_back(static_cast<int>(as_int(e, key, *this)));
    }
    return out;
  }
};

Architecture parse_architecture(const Reader& r) {
  simdjson::dom::array arr;
  if (r.get("architectures").get_array().get(arr) != simdjson::SUCCESS || arr.size() == 0)
    r.fail("field 'architectures' must be a non-empty list");
  std::string_view name;
  if ((*arr.begin()).get_string().get(name) != simdjson::SUCCESS) r.fail("field 'architectures' must hold strings");
  for (Architecture a : {Architecture::llama, Architecture::qwen2, Architecture::qwen3, Architecture::mixtral,
                         Architecture::qwen2_moe, Architecture::qwen3_moe}) {
    if (architecture_name(a) == name) return a;
  }
  r.fail("unsupported architecture '" + std::string(name) +
         "' (supported: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, MixtralForCausalLM, "
         "Qwen2MoeForCausalLM, Qwen3MoeForCausalLM)");
}

// rope_scaling (as in the checkpoints people download) or rope_parameters (newer transformers).
void parse_rope(const Reader& r, ModelConfig& c) {
  c.rope_theta = r.number("rope_theta", 10000.0);
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!r.has(key)) continue;
    object o;
    if (r.get(key).get_object().get(o) != simdjson::SUCCESS) r.fail(std::string("field '") + key + "' must be an object");
    Reader sub{o, r.source + ": " + key};
    if (sub.has("rope_theta")) c.rope_theta = sub.number(sub.get("rope_theta"), "rope_theta");
    std::string type = sub.string("rope_type", sub.string("type", "default"));
    if (type == "default") continue;
    if (type != "llama3") r.fail(std::string("unsupported ") + key + " type '" + type + "' (supported: llama3)");
    c.rope_scaling.type = type;
    c.rope_scaling.factor = sub.number(sub.get("factor"), "factor");
    c.rope_scaling.low_freq_factor = sub.number(sub.get("low_freq_factor"), "low_freq_factor");
    c.rope_scaling.high_freq_factor = sub.number(sub.get("high_freq_factor"), "high_freq_factor");
    c.rope_scaling.original_max_position_embeddings = sub.positive("original_max_position_embeddings");
  }
}

void parse_moe(const Reader& r, ModelConfig& c) {
  switch (c.arch) {
    case Architecture::mixtral:
      c.num_experts = r.positive("num_local_experts");
      c.num_experts_per_tok = r.positive("num_experts_per_tok");
      c.moe_intermediate_size = c.intermediate_size;
      c.norm_topk_prob = true;  // Mixtral always renormalises its top-k weights
      break;
    case Architecture::qwen2_moe:
    case Architecture::qwen3_moe:
      c.num_experts = r.positive("num_experts");
      c.num_experts_per_tok = r.positive("num_experts_per_tok");
      c.moe_intermediate_size = r.positive("moe_intermediate_size");
      c.norm_topk_prob = r.boolean("norm_topk_prob", c.arch == Architecture::qwen3_moe ? true : false);
      c.decoder_sparse_step = r.integer("decoder_sparse_step", 1);
      if (r.has("mlp_only_layers")) {
        simdjson::dom::array arr;
        if (r.get("mlp_only_layers").get_array().get(arr) != simdjson::SUCCESS)
          r.fail("field 'mlp_only_layers' must be a list of layer indices");
        for (element x : arr) c.mlp_only_layers.push_back(static_cast<int>(Reader::as_int(x, "mlp_only_layers", r)));
      }
      if (c.arch == Architecture::qwen2_moe) c.shared_expert_intermediate_size = r.integer("shared_expert_intermediate_size", 0);
      break;
    default:
      return;
  }
  if (c.num_experts_per_tok > c.num_experts)
    r.fail("num_experts_per_tok (" + std::to_string(c.num_experts_per_tok) + ") exceeds the number of experts (" +
           std::to_string(c.num_experts) + ")");
}

}  // namespace

std::string_view architecture_name(Architecture a) {
  switch (a) {
    case Architecture::llama: return "LlamaForCausalLM";
    case Architecture::qwen2: return "Qwen2ForCausalLM";
    case Architecture::qwen3: return "Qwen3ForCausalLM";
    case Architecture::mixtral: return "MixtralForCausalLM";
    case Architecture::qwen2_moe: return "Qwen2MoeForCausalLM";
    case Architecture::qwen3_moe: return "Qwen3MoeForCausalLM";
  }
  return "?";
}

bool ModelConfig::is_moe_layer(int layer) const {
  if (!is_moe()) return false;
  if (arch == Architecture::mixtral) return true;
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end()) return false;
  return decoder_sparse_step > 0 && (layer + 1) % decoder_sparse_step == 0;
}

ModelConfig parse_model_config(std::string_view json_text, std::string_view source) {
  simdjson::dom::parser parser;
  simdjson::padded_string padded(json_text);
  element doc;
  if (auto err = parser.parse(padded).get(doc); err)
    throw ConfigError(std::string(source) + ": not valid JSON (" + simdjson::error_message(err) + ")");
  object root;
  if (doc.get_object().get(root) != simdjson::SUCCESS) throw ConfigError(std::string(source) + ": expected a JSON object");
  Reader r{root, std::string(source)};

  ModelConfig c;
  c.arch = parse_architecture(r);
  c.model_type = r.string("model_type", "");
  c.vocab_size = r.positive("vocab_size");
  c.hidden_size = r.positive("hidden_size");
  c.intermediate_size = r.positive("intermediate_size");
  c.num_layers = r.positive("num_hidden_layers");
  c.num_heads = r.positive("num_attention_heads");
  c.num_kv_heads = r.has("num_key_value_heads") ? r.positive("num_key_value_heads") : c.num_heads;
  c.head_dim = r.has("head_dim") ? r.positive("head_dim") : c.hidden_size / c.num_heads;
  c.max_position_embeddings = r.positive("max_position_embeddings");
  c.rms_norm_eps = r.number("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  c.torch_dtype = r.string("torch_dtype", r.string("dtype", "bfloat16"));
  c.bos_token_ids = r.ids("bos_token_id");
  c.eos_token_ids = r.ids("eos_token_id");
  parse_rope(r, c);

  std::string act = r.string("hidden_act", "silu");
  if (act != "silu") r.fail("unsupported hidden_act '" + act + "' (supported: silu)");
  if (c.num_heads % c.num_kv_heads != 0)
    r.fail("num_attention_heads (" + std::to_string(c.num_heads) + ") must be a multiple of num_key_value_heads (" +
           std::to_string(c.num_kv_heads) + ")");
  if (c.head_dim % 2 != 0) r.fail("head_dim must be even for rotary embeddings, got " + std::to_string(c.head_dim));

  switch (c.arch) {
    case Architecture::llama:
      c.attention_bias = c.attention_output_bias = r.boolean("attention_bias", false);
      c.mlp_bias = r.boolean("mlp_bias", false);
      break;
    case Architecture::qwen2:
    case Architecture::qwen2_moe:
      c.attention_bias = r.boolean("qkv_bias", true);  // Qwen2 has q/k/v bias and no o_proj bias
      break;
    case Architecture::qwen3:
    case Architecture::qwen3_moe:
      c.attention_bias = c.attention_output_bias = r.boolean("attention_bias", false);
      c.qk_norm = true;
      break;
    case Architecture::mixtral:
      break;
  }
  parse_moe(r, c);
  return c;
}

ModelConfig load_model_config(const std::filesystem::path& model_dir) {
  auto path = model_dir / "config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path.string() + ": cannot open (is '" + model_dir.string() + "' a model directory?)");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_model_config(ss.str(), path.string());
}

}  // namespace troupe
