#include "tools/presets.hpp"

#include <boost/json/array.hpp>
#include <boost/json/value.hpp>
#include <utility>

namespace troupe {
namespace {

using boost::json::array;
using boost::json::object;
using boost::json::value;

// The hub files written by transformers, field for field (sorted keys, ints where the hub has ints,
// floats where it has floats).

object qwen3_config(int hidden, int intermediate, int layers, int heads, int kv_heads, bool tied) {
  return object{
      {"architectures", array{"Qwen3ForCausalLM"}},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"bos_token_id", 151643},
      {"eos_token_id", 151645},
      {"head_dim", 128},
      {"hidden_act", "silu"},
      {"hidden_size", hidden},
      {"initializer_range", 0.02},
      {"intermediate_size", intermediate},
      {"max_position_embeddings", 40960},
      {"max_window_layers", layers},
      {"model_type", "qwen3"},
      {"num_attention_heads", heads},
      {"num_hidden_layers", layers},
      {"num_key_value_heads", kv_heads},
      {"rms_norm_eps", 1e-06},
      {"rope_scaling", nullptr},
      {"rope_theta", 1000000},
      {"sliding_window", nullptr},
      {"tie_word_embeddings", tied},
      {"torch_dtype", "bfloat16"},
      {"transformers_version", "4.51.0"},
      {"use_cache", true},
      {"use_sliding_window", false},
      {"vocab_size", 151936},
  };
}

object qwen3_generation() {
  return object{
      {"bos_token_id", 151643}, {"do_sample", true}, {"eos_token_id", array{151645, 151643}},
      {"pad_token_id", 151643}, {"temperature", 0.6}, {"top_k", 20},
      {"top_p", 0.95},          {"transformers_version", "4.51.0"},
  };
}

object qwen3_moe_config() {  // Qwen/Qwen3-30B-A3B
  return object{
      {"architectures", array{"Qwen3MoeForCausalLM"}},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"bos_token_id", 151643},
      {"decoder_sparse_step", 1},
      {"eos_token_id", 151645},
      {"head_dim", 128},
      {"hidden_act", "silu"},
      {"hidden_size", 2048},
      {"initializer_range", 0.02},
      {"intermediate_size", 6144},
      {"max_position_embeddings", 40960},
      {"max_window_layers", 48},
      {"mlp_only_layers", array{}},
      {"model_type", "qwen3_moe"},
      {"moe_intermediate_size", 768},
      {"norm_topk_prob", true},
      {"num_attention_heads", 32},
      {"num_experts", 128},
      {"num_experts_per_tok", 8},
      {"num_hidden_layers", 48},
      {"num_key_value_heads", 4},
      {"output_router_logits", false},
      {"rms_norm_eps", 1e-06},
      {"rope_scaling", nullptr},
      {"rope_theta", 1000000.0},
      {"router_aux_loss_coef", 0.001},
      {"sliding_window", nullptr},
      {"tie_word_embeddings", false},
      {"torch_dtype", "bfloat16"},
      {"transformers_version", "4.51.0"},
      {"use_cache", true},
      {"use_sliding_window", false},
      {"vocab_size", 151936},
  };
}

object llama3_config(int hidden, int intermediate, int layers, double rope_factor, bool tied, bool explicit_head_dim,
                     const char* transformers_version) {
  object c{
      {"architectures", array{"LlamaForCausalLM"}},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"bos_token_id", 128000},
      {"eos_token_id", 128001},
  };
  // Llama 3.2 configs spell head_dim out; Llama 3.1 configs leave it to hidden / heads.
  if (explicit_head_dim) c["head_dim"] = hidden / 32;
  object rest{
      {"hidden_act", "silu"},
      {"hidden_size", hidden},
      {"initializer_range", 0.02},
      {"intermediate_size", intermediate},
      {"max_position_embeddings", 131072},
      {"mlp_bias", false},
      {"model_type", "llama"},
      {"num_attention_heads", 32},
      {"num_hidden_layers", layers},
      {"num_key_value_heads", 8},
      {"pretraining_tp", 1},
      {"rms_norm_eps", 1e-05},
      {"rope_scaling", object{{"factor", rope_factor},
                              {"high_freq_factor", 4.0},
                              {"low_freq_factor", 1.0},
                              {"original_max_position_embeddings", 8192},
                              {"rope_type", "llama3"}}},
      {"rope_theta", 500000.0},
      {"tie_word_embeddings", tied},
      {"torch_dtype", "bfloat16"},
      {"transformers_version", transformers_version},
      {"use_cache", true},
      {"vocab_size", 128256},
  };
  for (auto& kv : rest) c[kv.key()] = std::move(kv.value());
  return c;
}

// The Instruct checkpoints' generation config: stops on <|end_of_text|>, <|eom_id|> and <|eot_id|>.
object llama3_generation(const char* transformers_version) {
  return object{
      {"bos_token_id", 128000}, {"do_sample", true},  {"eos_token_id", array{128001, 128008, 128009}},
      {"temperature", 0.6},     {"top_p", 0.9},       {"transformers_version", transformers_version},
  };
}

object mixtral_config() {  // mistralai/Mixtral-8x7B-v0.1
  return object{
      {"architectures", array{"MixtralForCausalLM"}},
      {"attention_dropout", 0.0},
      {"bos_token_id", 1},
      {"eos_token_id", 2},
      {"hidden_act", "silu"},
      {"hidden_size", 4096},
      {"initializer_range", 0.02},
      {"intermediate_size", 14336},
      {"max_position_embeddings", 32768},
      {"model_type", "mixtral"},
      {"num_attention_heads", 32},
      {"num_experts_per_tok", 2},
      {"num_hidden_layers", 32},
      {"num_key_value_heads", 8},
      {"num_local_experts", 8},
      {"output_router_logits", false},
      {"rms_norm_eps", 1e-05},
      {"rope_theta", 1000000.0},
      {"router_aux_loss_coef", 0.02},
      {"sliding_window", nullptr},
      {"tie_word_embeddings", false},
      {"torch_dtype", "bfloat16"},
      {"transformers_version", "4.36.0.dev0"},
      {"use_cache", true},
      {"vocab_size", 32000},
  };
}

object mixtral_generation() {
  return object{{"_from_model_config", true},
                {"bos_token_id", 1},
                {"eos_token_id", 2},
                {"transformers_version", "4.36.0.dev0"}};
}

object qwen2_moe_config() {  // Qwen/Qwen1.5-MoE-A2.7B
  return object{
      {"architectures", array{"Qwen2MoeForCausalLM"}},
      {"attention_dropout", 0.0},
      {"bos_token_id", 151643},
      {"decoder_sparse_step", 1},
      {"eos_token_id", 151643},
      {"hidden_act", "silu"},
      {"hidden_size", 2048},
      {"initializer_range", 0.02},
      {"intermediate_size", 5632},
      {"max_position_embeddings", 8192},
      {"max_window_layers", 21},
      {"model_type", "qwen2_moe"},
      {"moe_intermediate_size", 1408},
      {"norm_topk_prob", false},
      {"num_attention_heads", 16},
      {"num_experts", 60},
      {"num_experts_per_tok", 4},
      {"num_hidden_layers", 24},
      {"num_key_value_heads", 16},
      {"output_router_logits", false},
      {"rms_norm_eps", 1e-06},
      {"rope_theta", 1000000.0},
      {"router_aux_loss_coef", 0.001},
      {"shared_expert_intermediate_size", 5632},
      {"sliding_window", 32768},
      {"tie_word_embeddings", false},
      {"torch_dtype", "bfloat16"},
      {"transformers_version", "4.40.0.dev0"},
      {"use_cache", true},
      {"use_sliding_window", false},
      {"vocab_size", 151936},
  };
}

object qwen2_moe_generation() {
  return object{{"bos_token_id", 151643},
                {"do_sample", false},
                {"eos_token_id", 151643},
                {"max_new_tokens", 2048},
                {"transformers_version", "4.37.0"}};
}

object qwen2_config() {  // Qwen/Qwen2.5-0.5B: the shape of a Qwen2 dense config, for tiny-qwen2
  return object{
      {"architectures", array{"Qwen2ForCausalLM"}},
      {"attention_dropout", 0.0},
      {"bos_token_id", 151643},
      {"eos_token_id", 151643},
      {"hidden_act", "silu"},
      {"hidden_size", 896},
      {"initializer_range", 0.02},
      {"intermediate_size", 4864},
      {"max_position_embeddings", 32768},
      {"max_window_layers", 24},
      {"model_type", "qwen2"},
      {"num_attention_heads", 14},
      {"num_hidden_layers", 24},
      {"num_key_value_heads", 2},
      {"rms_norm_eps", 1e-06},
      {"rope_theta", 1000000.0},
      {"sliding_window", 32768},
      {"tie_word_embeddings", true},
      {"torch_dtype", "bfloat16"},
      {"transformers_version", "4.40.1"},
      {"use_cache", true},
      {"use_sliding_window", false},
      {"vocab_size", 151936},
  };
}

// A copy of `base` with some fields replaced (in place, keeping the hub's order) or added.
object with(object base, std::initializer_list<std::pair<const char*, value>> changes) {
  for (const auto& [key, v] : changes) base[key] = v;
  return base;
}

// Tiny presets: the real family's files with small shapes and a 512-id vocabulary (bos 1, eos 2).
object tiny_generation(object base) {
  object g = with(std::move(base), {{"bos_token_id", 1}, {"eos_token_id", 2}});
  if (g.contains("pad_token_id")) g["pad_token_id"] = 0;
  return g;
}

std::vector<Preset> build_presets() {
  std::vector<Preset> p;
  using F = TokenizerFamily;
  p.push_back({"qwen3-0.6b", "Qwen/Qwen3-0.6B", F::qwen3, qwen3_config(1024, 3072, 28, 16, 8, true), qwen3_generation()});
  p.push_back({"qwen3-8b", "Qwen/Qwen3-8B", F::qwen3, qwen3_config(4096, 12288, 36, 32, 8, false), qwen3_generation()});
  p.push_back(
      {"qwen3-32b", "Qwen/Qwen3-32B", F::qwen3, qwen3_config(5120, 25600, 64, 64, 8, false), qwen3_generation()});
  p.push_back({"llama-3.2-1b", "meta-llama/Llama-3.2-1B", F::llama3,
               llama3_config(2048, 8192, 16, 32.0, true, true, "4.45.0.dev0"), llama3_generation("4.45.0.dev0")});
  p.push_back({"llama-3.1-8b", "meta-llama/Llama-3.1-8B", F::llama3,
               llama3_config(4096, 14336, 32, 8.0, false, false, "4.43.0.dev0"), llama3_generation("4.42.3")});
  p.push_back({"qwen3-30b-a3b", "Qwen/Qwen3-30B-A3B", F::qwen3, qwen3_moe_config(), qwen3_generation()});
  // Config-only models for layout planning (70 GB and 470 GB of bf16 weights; --config-only).
  p.push_back({"llama-3.1-70b", "meta-llama/Llama-3.1-70B", F::llama3,
               with(llama3_config(8192, 28672, 80, 8.0, false, false, "4.43.0.dev0"), {{"num_attention_heads", 64}}),
               llama3_generation("4.42.3")});
  p.push_back({"qwen3-235b-a22b", "Qwen/Qwen3-235B-A22B", F::qwen3,
               with(qwen3_moe_config(), {{"hidden_size", 4096},
                                         {"intermediate_size", 12288},
                                         {"max_window_layers", 94},
                                         {"moe_intermediate_size", 1536},
                                         {"num_attention_heads", 64},
                                         {"num_hidden_layers", 94}}),
               qwen3_generation()});
  p.push_back({"mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1", F::llama2, mixtral_config(), mixtral_generation()});
  p.push_back({"qwen1.5-moe-a2.7b", "Qwen/Qwen1.5-MoE-A2.7B", F::qwen3, qwen2_moe_config(), qwen2_moe_generation()});

  const object tiny_ids{{"vocab_size", 512}, {"bos_token_id", 1}, {"eos_token_id", 2}, {"max_position_embeddings", 2048}};
  auto tiny = [&](object c) {
    for (const auto& kv : tiny_ids) c[kv.key()] = kv.value();
    return c;
  };
  p.push_back({"tiny-llama", "", F::none,
               tiny(with(llama3_config(2048, 8192, 16, 8.0, true, true, "4.45.0.dev0"),
                         {{"head_dim", 16},
                          {"hidden_size", 64},
                          {"intermediate_size", 128},
                          {"num_attention_heads", 4},
                          {"num_hidden_layers", 2},
                          {"num_key_value_heads", 2},
                          {"rope_scaling", object{{"factor", 8.0},
                                                  {"high_freq_factor", 4.0},
                                                  {"low_freq_factor", 1.0},
                                                  {"original_max_position_embeddings", 64},
                                                  {"rope_type", "llama3"}}}})),
               tiny_generation(llama3_generation("4.45.0.dev0"))});
  p.push_back({"tiny-qwen2", "", F::none,
               tiny(with(qwen2_config(), {{"hidden_size", 64},
                                          {"intermediate_size", 160},
                                          {"max_window_layers", 2},
                                          {"num_attention_heads", 4},
                                          {"num_hidden_layers", 2},
                                          {"num_key_value_heads", 2},
                                          {"tie_word_embeddings", false}})),
               tiny_generation(qwen2_moe_generation())});
  p.push_back({"tiny-qwen3", "", F::none,
               tiny(with(qwen3_config(64, 128, 2, 4, 2, true), {{"head_dim", 32}})),
               tiny_generation(qwen3_generation())});
  // A tiny Qwen3 with the real Qwen3 vocabulary and tokenizer: serving tests speak text to it.
  p.push_back({"tiny-qwen3-chat", "", F::qwen3, with(qwen3_config(64, 128, 2, 4, 2, true), {{"head_dim", 16}}),
               qwen3_generation()});
  // One kv head: tensor parallelism must replicate it (vLLM's rule for MQA models).
  p.push_back({"tiny-llama-mqa", "", F::none,
               tiny(with(llama3_config(2048, 8192, 16, 8.0, true, true, "4.45.0.dev0"),
                         {{"head_dim", 16},
                          {"hidden_size", 64},
                          {"intermediate_size", 128},
                          {"num_attention_heads", 4},
                          {"num_hidden_layers", 2},
                          {"num_key_value_heads", 1}})),
               tiny_generation(llama3_generation("4.45.0.dev0"))});
  p.push_back({"tiny-mixtral", "", F::none,
               tiny(with(mixtral_config(), {{"hidden_size", 64},
                                            {"intermediate_size", 96},
                                            {"num_attention_heads", 4},
                                            {"num_experts_per_tok", 2},
                                            {"num_hidden_layers", 2},
                                            {"num_key_value_heads", 2},
                                            {"num_local_experts", 4}})),
               tiny_generation(mixtral_generation())});
  p.push_back({"tiny-qwen2-moe", "", F::none,
               tiny(with(qwen2_moe_config(), {{"hidden_size", 64},
                                              {"intermediate_size", 128},
                                              {"max_window_layers", 3},
                                              {"mlp_only_layers", array{1}},
                                              {"moe_intermediate_size", 32},
                                              {"norm_topk_prob", false},
                                              {"num_attention_heads", 4},
                                              {"num_experts", 8},
                                              {"num_experts_per_tok", 2},
                                              {"num_hidden_layers", 3},
                                              {"num_key_value_heads", 2},
                                              {"shared_expert_intermediate_size", 64}})),
               tiny_generation(qwen2_moe_generation())});
  p.push_back({"tiny-qwen3-moe", "", F::none,
               tiny(with(qwen3_moe_config(), {{"head_dim", 16},
                                              {"hidden_size", 64},
                                              {"intermediate_size", 128},
                                              {"max_window_layers", 3},
                                              {"moe_intermediate_size", 32},
                                              {"norm_topk_prob", true},
                                              {"num_attention_heads", 4},
                                              {"num_experts", 8},
                                              {"num_experts_per_tok", 2},
                                              {"num_hidden_layers", 3},
                                              {"num_key_value_heads", 2}})),
               tiny_generation(qwen3_generation())});
  return p;
}

}  // namespace

const std::vector<Preset>& presets() {
  static const std::vector<Preset> all = build_presets();
  return all;
}

const Preset* find_preset(std::string_view name) {
  for (const Preset& p : presets())
    if (p.name == name) return &p;
  return nullptr;
}

std::string preset_names() {
  std::string s;
  for (const Preset& p : presets()) s += (s.empty() ? "" : ", ") + p.name;
  return s;
}

std::string_view tokenizer_package(TokenizerFamily family) {
  switch (family) {
    case TokenizerFamily::qwen3: return "tokenizer-qwen3";
    case TokenizerFamily::llama3: return "tokenizer-llama3";
    case TokenizerFamily::llama2: return "tokenizer-llama2";
    case TokenizerFamily::none: return "";
  }
  return "";
}

}  // namespace troupe
