// config.json -> ModelConfig for every supported architecture, and the errors a broken config gives.
#include "config/model_config.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <functional>

#include "config/error.hpp"
#include "tests/test_support.hpp"

namespace troupe {
namespace {

ModelConfig parse(const std::string& json) { return parse_model_config(json, "config.json"); }

void expect_config_error(const std::string& json, const std::vector<std::string>& parts) {
  try {
    parse_model_config(json, "broken/config.json");
    ADD_FAILURE() << "no ConfigError for: " << json;
  } catch (const ConfigError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("broken/config.json"), std::string::npos) << msg;
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

// Llama-3.2-1B's config.json as published.
const char* llama32_1b = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
  "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256})";

TEST(ModelConfig, Llama32) {
  ModelConfig c = parse(llama32_1b);
  EXPECT_EQ(c.arch, Architecture::llama);
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.intermediate_size, 8192);
  EXPECT_EQ(c.num_layers, 16);
  EXPECT_EQ(c.num_heads, 32);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.q_size(), 2048);
  EXPECT_EQ(c.kv_size(), 512);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_FALSE(c.is_moe());
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_EQ(c.bos_token_ids, std::vector<int>{128000});
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{128001});
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

// Llama-3.1-8B-Instruct: no head_dim (hidden / heads), a list of eos ids, and the newer
// `rope_parameters` spelling that carries rope_theta inside it.
TEST(ModelConfig, Llama31WithRopeParametersAndDefaultHeadDim) {
  ModelConfig c = parse(R"({
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "tie_word_embeddings": false,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
    "rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192, "rope_theta": 500000.0}})");
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{128001, 128008, 128009}));
}

TEST(ModelConfig, DefaultsWhenOptionalFieldsAreAbsent) {
  ModelConfig c = parse(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 512, "max_position_embeddings": 256,
    "rope_scaling": null})");
  EXPECT_EQ(c.num_kv_heads, 4);  // no num_key_value_heads: multi-head attention
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_TRUE(c.rope_scaling.type.empty());
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_TRUE(c.bos_token_ids.empty());
}

TEST(ModelConfig, Qwen2HasQkvBiasButNoOutputBias) {
  ModelConfig c = parse(R"({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
    "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "vocab_size": 151936, "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
    "tie_word_embeddings": true, "sliding_window": 32768, "use_sliding_window": false})");
  EXPECT_EQ(c.arch, Architecture::qwen2);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.attention_output_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
}

TEST(ModelConfig, Qwen3HasQkNormAndExplicitHeadDim) {
  ModelConfig c = parse(R"({"architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "head_dim": 128,
    "hidden_size": 1024, "intermediate_size": 3072, "max_position_embeddings": 40960, "model_type": "qwen3",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": null, "rope_theta": 1000000, "tie_word_embeddings": true, "vocab_size": 151936,
    "bos_token_id": 151643, "eos_token_id": 151645})");
  EXPECT_EQ(c.arch, Architecture::qwen3);
  EXPECT_EQ(c.head_dim, 128);  // not hidden / heads (64)
  EXPECT_EQ(c.q_size(), 2048);
  EXPECT_EQ(c.kv_size(), 1024);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);  // an integer in the file
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{151645});
}

TEST(ModelConfig, Mixtral) {
  ModelConfig c = parse(R"({"architectures": ["MixtralForCausalLM"], "hidden_size": 4096,
    "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mixtral",
    "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "num_local_experts": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": null,
    "tie_word_embeddings": false, "vocab_size": 32000, "bos_token_id": 1, "eos_token_id": 2})");
  EXPECT_EQ(c.arch, Architecture::mixtral);
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.moe_intermediate_size, 14336);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_FALSE(c.has_shared_expert());
  EXPECT_EQ(c.head_dim, 128);
  for (int layer : {0, 1, 31}) EXPECT_TRUE(c.is_moe_layer(layer)) << layer;
}

TEST(ModelConfig, Qwen2MoeSharedExpertSparseStepAndMlpOnlyLayers) {
  ModelConfig c = parse(R"({"architectures": ["Qwen2MoeForCausalLM"], "hidden_size": 2048,
    "intermediate_size": 5632, "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
    "num_hidden_layers": 6, "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 60,
    "num_experts_per_tok": 4, "norm_topk_prob": false, "decoder_sparse_step": 2, "mlp_only_layers": [3],
    "vocab_size": 151936, "max_position_embeddings": 8192, "rope_theta": 1000000.0})");
  EXPECT_EQ(c.arch, Architecture::qwen2_moe);
  EXPECT_EQ(c.num_experts, 60);
  EXPECT_EQ(c.num_experts_per_tok, 4);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_EQ(c.moe_intermediate_size, 1408);
  EXPECT_EQ(c.shared_expert_intermediate_size, 5632);
  EXPECT_TRUE(c.has_shared_expert());
  EXPECT_EQ(c.decoder_sparse_step, 2);
  EXPECT_EQ(c.mlp_only_layers, std::vector<int>{3});
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.qk_norm);
  // Sparse when (layer + 1) % step == 0 and the layer is not listed in mlp_only_layers.
  std::vector<bool> sparse;
  for (int layer = 0; layer < 6; ++layer) sparse.push_back(c.is_moe_layer(layer));
  EXPECT_EQ(sparse, (std::vector<bool>{false, true, false, false, false, true}));
}

TEST(ModelConfig, Qwen3Moe) {
  ModelConfig c = parse(R"({"architectures": ["Qwen3MoeForCausalLM"], "decoder_sparse_step": 1, "head_dim": 128,
    "hidden_size": 2048, "intermediate_size": 6144, "max_position_embeddings": 40960, "mlp_only_layers": [],
    "model_type": "qwen3_moe", "moe_intermediate_size": 768, "norm_topk_prob": true, "num_attention_heads": 32,
    "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "tie_word_embeddings": false, "vocab_size": 151936})");
  EXPECT_EQ(c.arch, Architecture::qwen3_moe);
  EXPECT_EQ(c.model_type, "qwen3_moe");
  EXPECT_EQ(c.num_experts, 128);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.moe_intermediate_size, 768);
  EXPECT_EQ(c.intermediate_size, 6144);
  EXPECT_FALSE(c.has_shared_expert());
  EXPECT_TRUE(c.mlp_only_layers.empty());
  EXPECT_TRUE(c.qk_norm);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_kv_heads, 4);
  for (int layer : {0, 1, 47}) EXPECT_TRUE(c.is_moe_layer(layer)) << layer;
}

TEST(ModelConfig, Qwen3MoeNormTopkDefaultsOnAndMlpOnlyLayersAreDense) {
  ModelConfig c = parse(R"({"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
    "moe_intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_experts": 8, "num_experts_per_tok": 2, "mlp_only_layers": [0, 2], "vocab_size": 512,
    "max_position_embeddings": 2048})");
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.decoder_sparse_step, 1);
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_TRUE(c.is_moe_layer(1));
  EXPECT_FALSE(c.is_moe_layer(2));
}

TEST(ModelConfig, ArchitectureNamesRoundTrip) {
  for (Architecture a : {Architecture::llama, Architecture::qwen2, Architecture::qwen3, Architecture::mixtral,
                         Architecture::qwen2_moe, Architecture::qwen3_moe}) {
    std::string json = R"({"architectures": [")" + std::string(architecture_name(a)) +
                       R"("], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
      "num_attention_heads": 4, "vocab_size": 512, "max_position_embeddings": 2048, "num_local_experts": 4,
      "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32})";
    EXPECT_EQ(parse(json).arch, a) << architecture_name(a);
  }
}

// --- malformed configs ---------------------------------------------------------------------------

const char* minimal_fields = R"("hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
  "num_attention_heads": 4, "vocab_size": 512, "max_position_embeddings": 2048)";

std::string llama_with(const std::string& extra) {
  return std::string(R"({"architectures": ["LlamaForCausalLM"], )") + minimal_fields + extra + "}";
}

TEST(ModelConfigErrors, UnknownArchitecture) {
  expect_config_error(std::string(R"({"architectures": ["GPT2LMHeadModel"], )") + minimal_fields + "}",
                      {"GPT2LMHeadModel", "unsupported architecture"});
  expect_config_error(std::string(R"({"architectures": [], )") + minimal_fields + "}", {"architectures"});
  expect_config_error(std::string("{") + minimal_fields + "}", {"architectures"});
}

TEST(ModelConfigErrors, MissingRequiredField) {
  for (const char* field : {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                            "vocab_size", "max_position_embeddings"}) {
    std::string json = llama_with("");
    auto at = json.find(std::string("\"") + field + "\"");
    ASSERT_NE(at, std::string::npos);
    json.replace(at + 1, std::strlen(field), std::string("x_") + field);  // rename the key away
    expect_config_error(json, {std::string("missing required field '") + field + "'"});
  }
  expect_config_error(R"({"architectures": ["MixtralForCausalLM"], )" + std::string(minimal_fields) +
                          R"(, "num_experts_per_tok": 2})",
                      {"num_local_experts"});
  expect_config_error(R"({"architectures": ["Qwen3MoeForCausalLM"], )" + std::string(minimal_fields) +
                          R"(, "num_experts": 8, "num_experts_per_tok": 2})",
                      {"moe_intermediate_size"});
}

TEST(ModelConfigErrors, WrongTypes) {
  expect_config_error(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": "64", "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 512, "max_position_embeddings": 2048})",
                      {"'hidden_size'", "integer"});
  expect_config_error(llama_with(R"(, "tie_word_embeddings": "yes")"), {"'tie_word_embeddings'"});
  expect_config_error(llama_with(R"(, "rope_scaling": 8)"), {"'rope_scaling'"});
  expect_config_error(llama_with(R"(, "rope_scaling": {"rope_type": "yarn", "factor": 4.0})"), {"yarn"});
  expect_config_error(llama_with(R"(, "hidden_act": "gelu")"), {"hidden_act", "gelu"});
  expect_config_error(llama_with(R"(, "num_key_value_heads": 3)"), {"num_key_value_heads"});
  expect_config_error(llama_with(R"(, "bos_token_id": "one")"), {"bos_token_id"});
  expect_config_error(R"({"architectures": "LlamaForCausalLM", )" + std::string(minimal_fields) + "}",
                      {"architectures"});
  expect_config_error(R"({"architectures": ["Qwen2MoeForCausalLM"], )" + std::string(minimal_fields) +
                          R"(, "num_experts": 2, "num_experts_per_tok": 4, "moe_intermediate_size": 32})",
                      {"num_experts_per_tok"});
}

TEST(ModelConfigErrors, NotJson) {
  expect_config_error("{\"architectures\": [\"LlamaForCausalLM\"", {"not valid JSON"});
  expect_config_error("", {"not valid JSON"});
  expect_config_error("[1, 2]", {"JSON object"});
}

TEST(ModelConfigErrors, LoadFromMissingDirectory) {
  auto dir = test::scratch_dir() / "no-such-model";
  try {
    load_model_config(dir);
    ADD_FAILURE() << "no ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(dir.string()), std::string::npos) << e.what();
  }
}

TEST(ModelConfig, LoadFromDirectory) {
  auto dir = test::scratch_dir();
  std::ofstream(dir / "config.json") << llama32_1b;
  ModelConfig c = load_model_config(dir);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 32.0);
}

}  // namespace
}  // namespace troupe
