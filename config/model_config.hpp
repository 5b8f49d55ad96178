// The model as described by a Hugging Face `config.json`: everything the engine needs to know about
// shapes and numerics, for the architectures troupe runs. Parsing lives in model_config.cpp.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace troupe {

enum class Architecture { llama, qwen2, qwen3, mixtral, qwen2_moe, qwen3_moe };

std::string_view architecture_name(Architecture a);  // the Hugging Face class name

// Llama 3 style frequency-dependent scaling of RoPE; `type` is empty when no scaling is used.
struct RopeScaling {
  std::string type;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 1.0;
  int original_max_position_embeddings = 0;
};

struct ModelConfig {
  Architecture arch = Architecture::llama;
  std::string model_type;  // "llama", "qwen3_moe", ...

  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;  // dense MLP (and Mixtral experts)
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int max_position_embeddings = 0;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // bias on q/k/v projections (Qwen2 always; Llama/Qwen3 by flag)
  bool attention_output_bias = false;  // bias on o_proj (Llama's attention_bias covers it too)
  bool mlp_bias = false;
  bool qk_norm = false;  // per-head RMSNorm on q and k (Qwen3)

  // Mixture of experts; num_experts == 0 means a dense model.
  int num_experts = 0;
  int num_experts_per_tok = 0;
  bool norm_topk_prob = false;  // renormalise the top-k routing weights to sum to 1
  int moe_intermediate_size = 0;
  int shared_expert_intermediate_size = 0;  // Qwen2-MoE; 0 = no shared expert
  int decoder_sparse_step = 1;
  std::vector<int> mlp_only_layers;

  std::vector<int> bos_token_ids;
  std::vector<int> eos_token_ids;
  std::string torch_dtype;

  bool is_moe() const { return num_experts > 0; }
  bool has_shared_expert() const { return shared_expert_intermediate_size > 0; }
  // Whether decoder layer `layer` uses the sparse MoE block (Qwen-MoE's decoder_sparse_step and
  // mlp_only_layers; every layer for Mixtral).
  bool is_moe_layer(int layer) const;
  int q_size() const { return num_heads * head_dim; }
  int kv_size() const { return num_kv_heads * head_dim; }
};

// Parses the text of a config.json; `source` names the file in error messages.
// Throws ConfigError naming the field (or the architecture) on any problem.
ModelConfig parse_model_config(std::string_view json_text, std::string_view source);
ModelConfig load_model_config(const std::filesystem::path& model_dir);

}  // namespace troupe
