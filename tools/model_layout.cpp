#include "tools/model_layout.hpp"

#include <cmath>

namespace troupe {
namespace {

// Scales of a trained transformer, so activations stay of order 1 through the layers and the logits
// come out of order 1: a linear layer keeps the variance of its input (std 1/sqrt(in)); the two
// projections that write into the residual stream shrink by 1/sqrt(2 * layers) so the sum over layers
// stays bounded (GPT-2's scaled init); norm weights sit near 1 but not at 1, so a forgotten multiply
// changes the output.
class LayoutBuilder {
 public:
  LayoutBuilder(const ModelConfig& c, int depth)
      : c_(c), residual_(1.0f / std::sqrt(2.0f * static_cast<float>(depth))) {}

  std::vector<WeightSpec> build() {
    const int64_t H = c_.hidden_size;
    embedding("model.embed_tokens.weight", c_.vocab_size);
    for (int layer = 0; layer < c_.num_layers; ++layer) decoder_layer(layer);
    norm("model.norm.weight", H);
    if (!c_.tie_word_embeddings) embedding("lm_head.weight", c_.vocab_size);
    return std::move(out_);
  }

 private:
  void add(std::string name, std::vector<int64_t> shape, WeightInit init) {
    out_.push_back({std::move(name), std::move(shape), init});
  }
  void linear(const std::string& name, int64_t out, int64_t in, bool residual_output = false) {
    float std = 1.0f / std::sqrt(static_cast<float>(in));
    add(name, {out, in}, {0.0f, residual_output ? std * residual_ : std});
  }
  void bias(const std::string& name, int64_t n) { add(name, {n}, {0.0f, 0.1f}); }
  void norm(const std::string& name, int64_t n) { add(name, {n}, {1.0f, 0.1f}); }
  // Embedding rows and lm_head rows both have std 1/sqrt(hidden): unit-norm rows in expectation.
  void embedding(const std::string& name, int64_t rows) {
    add(name, {rows, c_.hidden_size}, {0.0f, 1.0f / std::sqrt(static_cast<float>(c_.hidden_size))});
  }

  void decoder_layer(int layer) {
    const int64_t H = c_.hidden_size;
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    norm(p + "input_layernorm.weight", H);
    attention(p + "self_attn.");
    norm(p + "post_attention_layernorm.weight", H);
    if (!c_.is_moe_layer(layer)) {
      mlp(p + "mlp.", c_.intermediate_size, c_.mlp_bias);
    } else if (c_.arch == Architecture::mixtral) {
      mixtral_moe(p + "block_sparse_moe.");
    } else {
      qwen_moe(p + "mlp.");
    }
  }

  void attention(const std::string& p) {
    const int64_t H = c_.hidden_size, q = c_.q_size(), kv = c_.kv_size();
    linear(p + "q_proj.weight", q, H);
    if (c_.attention_bias) bias(p + "q_proj.bias", q);
    linear(p + "k_proj.weight", kv, H);
    if (c_.attention_bias) bias(p + "k_proj.bias", kv);
    linear(p + "v_proj.weight", kv, H);
    if (c_.attention_bias) bias(p + "v_proj.bias", kv);
    linear(p + "o_proj.weight", H, q, true);
    if (c_.attention_output_bias) bias(p + "o_proj.bias", H);
    if (c_.qk_norm) {
      norm(p + "q_norm.weight", c_.head_dim);
      norm(p + "k_norm.weight", c_.head_dim);
    }
  }

  void mlp(const std::string& p, int64_t inter, bool with_bias) {
    const int64_t H = c_.hidden_size;
    linear(p + "gate_proj.weight", inter, H);
    if (with_bias) bias(p + "gate_proj.bias", inter);
    linear(p + "up_proj.weight", inter, H);
    if (with_bias) bias(p + "up_proj.bias", inter);
    linear(p + "down_proj.weight", H, inter, true);
    if (with_bias) bias(p + "down_proj.bias", H);
  }

  void qwen_moe(const std::string& p) {
    const int64_t H = c_.hidden_size;
    linear(p + "gate.weight", c_.num_experts, H);
    for (int e = 0; e < c_.num_experts; ++e) mlp(p + "experts." + std::to_string(e) + ".", c_.moe_intermediate_size, false);
    if (c_.has_shared_expert()) {
      mlp(p + "shared_expert.", c_.shared_expert_intermediate_size, false);
      linear(p + "shared_expert_gate.weight", 1, H);
    }
  }

  // Mixtral names its expert projections w1 (gate), w2 (down), w3 (up).
  void mixtral_moe(const std::string& p) {
    const int64_t H = c_.hidden_size, I = c_.intermediate_size;
    linear(p + "gate.weight", c_.num_experts, H);
    for (int e = 0; e < c_.num_experts; ++e) {
      const std::string x = p + "experts." + std::to_string(e) + ".";
      linear(x + "w1.weight", I, H);
      linear(x + "w2.weight", H, I, true);
      linear(x + "w3.weight", I, H);
    }
  }

  const ModelConfig& c_;
  float residual_;
  std::vector<WeightSpec> out_;
};

}  // namespace

std::vector<WeightSpec> checkpoint_layout(const ModelConfig& config, int depth) {
  return LayoutBuilder(config, depth).build();
}

uint64_t count_parameters(const ModelConfig& config) {
  uint64_t n = 0;
  for (const WeightSpec& w : checkpoint_layout(config, config.num_layers)) n += w.numel();
  return n;
}

}  // namespace troupe
