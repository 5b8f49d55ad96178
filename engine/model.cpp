#include "engine/model.hpp"

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "engine/rope.hpp"

namespace troupe {
namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

// Reads named tensors out of the checkpoint into backend memory, checking each shape against what the
// config implies, and fusing tensors that the forward pass uses as one matrix.
class Loader {
 public:
  Loader(const WeightFiles& files, Backend& backend, const LoadProgress& progress)
      : files_(files), backend_(backend), progress_(progress), total_(files.total_bytes()) {}

  HostView view(const std::string& name, const std::vector<int64_t>& shape) {
    HostView v = files_.get(name);
    if (v.shape != shape)
      throw WeightError("tensor '" + name + "' has shape " + shape_text(v.shape) + " but the config implies " +
                        shape_text(shape));
    return v;
  }

  Tensor load(const std::string& name, const std::vector<int64_t>& shape) {
    Tensor t = backend_.allocate(shape, backend_.compute_dtype());
    put(name, t);
    return t;
  }

  // Several [rows_i, cols] matrices stacked into one [Σ rows_i, cols] (q/k/v, gate/up).
  Tensor load_stacked(const std::vector<std::string>& names, const std::vector<int64_t>& rows, int64_t cols) {
    int64_t total = 0;
    for (int64_t r : rows) total += r;
    Tensor t = backend_.allocate({total, cols}, backend_.compute_dtype());
    int64_t at = 0;
    for (size_t i = 0; i < names.size(); ++i) {
      put(names[i], t.rows(at, at + rows[i]));
      at += rows[i];
    }
    return t;
  }

  // Copies the named tensor into `dst`, whose shape is the one expected.
  void put(const std::string& name, const Tensor& dst) {
    HostView v = view(name, dst.shape());
    backend_.upload(v, dst);
    done_ += v.nbytes();
    if (progress_) progress_(done_, total_);
  }

  Backend& backend() { return backend_; }

 private:
  const WeightFiles& files_;
  Backend& backend_;
  const LoadProgress& progress_;
  uint64_t done_ = 0;
  uint64_t total_ = 0;
};

struct Mlp {
  Tensor gate_up;  // [2I, H]
  Tensor down;     // [H, I]
};

struct Moe {
  Tensor router;   // [E, H]
  Tensor gate_up;  // [E, 2I, H]
  Tensor down;     // [E, H, I]
  bool has_shared = false;
  Mlp shared;
  Tensor shared_gate;  // [1, H]
};

}  // namespace

struct Model::Weights {
  struct Layer {
    Tensor input_norm, post_attention_norm;
    Tensor qkv, qkv_bias, o, o_bias;
    Tensor q_norm, k_norm;
    bool moe = false;
    Mlp mlp;
    Moe experts;
  };
  Tensor embed;
  Tensor final_norm;
  Tensor lm_head;  // the embedding when tied
  std::vector<Layer> layers;
  RopeTable rope;
};

namespace {

Mlp load_mlp(Loader& load, const std::string& prefix, const std::string& gate, const std::string& up,
             const std::string& down, int64_t hidden, int64_t inter) {
  return {load.load_stacked({prefix + gate + ".weight", prefix + up + ".weight"}, {inter, inter}, hidden),
          load.load(prefix + down + ".weight", {hidden, inter})};
}

Moe load_moe(Loader& load, const ModelConfig& c, const std::string& layer) {
  const bool mixtral = c.arch == Architecture::mixtral;
  const std::string block = layer + (mixtral ? "block_sparse_moe." : "mlp.");
  const int64_t h = c.hidden_size, inter = c.moe_intermediate_size, e = c.num_experts;
  Backend& be = load.backend();
  Moe m;
  m.router = load.load(block + "gate.weight", {e, h});
  m.gate_up = be.allocate({e, 2 * inter, h}, be.compute_dtype());
  m.down = be.allocate({e, h, inter}, be.compute_dtype());
  for (int64_t x = 0; x < e; ++x) {
    const std::string p = block + "experts." + std::to_string(x) + ".";
    Tensor gu = m.gate_up.rows(x, x + 1).reshape({2 * inter, h});
    load.put(p + (mixtral ? "w1" : "gate_proj") + ".weight", gu.rows(0, inter));
    load.put(p + (mixtral ? "w3" : "up_proj") + ".weight", gu.rows(inter, 2 * inter));
    load.put(p + (mixtral ? "w2" : "down_proj") + ".weight", m.down.rows(x, x + 1).reshape({h, inter}));
  }
  if (c.has_shared_expert()) {
    m.has_shared = true;
    m.shared = load_mlp(load, block + "shared_expert.", "gate_proj", "up_proj", "down_proj", h,
                        c.shared_expert_intermediate_size);
    m.shared_gate = load.load(block + "shared_expert_gate.weight", {1, h});
  }
  return m;
}

}  // namespace

Model::Model(ModelConfig config, const WeightFiles& files, Backend& backend, int max_positions,
             const LoadProgress& progress)
    : config_(std::move(config)),
      backend_(backend),
      max_positions_(max_positions > 0 ? max_positions : config_.max_position_embeddings),
      weights_(std::make_unique<Weights>()) {
  const ModelConfig& c = config_;
  Loader load(files, backend, progress);
  Weights& w = *weights_;
  const int64_t h = c.hidden_size, d = c.head_dim;
  w.embed = load.load("model.embed_tokens.weight", {c.vocab_size, h});
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Weights::Layer layer;
    layer.input_norm = load.load(p + "input_layernorm.weight", {h});
    layer.post_attention_norm = load.load(p + "post_attention_layernorm.weight", {h});
    const std::string a = p + "self_attn.";
    const int64_t q = c.q_size(), kv = c.kv_size();
    layer.qkv = load.load_stacked({a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"}, {q, kv, kv}, h);
    if (c.attention_bias) {
      layer.qkv_bias = backend.allocate({q + 2 * kv}, backend.compute_dtype());
      load.put(a + "q_proj.bias", layer.qkv_bias.rows(0, q));
      load.put(a + "k_proj.bias", layer.qkv_bias.rows(q, q + kv));
      load.put(a + "v_proj.bias", layer.qkv_bias.rows(q + kv, q + 2 * kv));
    }
    layer.o = load.load(a + "o_proj.weight", {h, q});
    if (c.attention_output_bias) layer.o_bias = load.load(a + "o_proj.bias", {h});
    if (c.qk_norm) {
      layer.q_norm = load.load(a + "q_norm.weight", {d});
      layer.k_norm = load.load(a + "k_norm.weight", {d});
    }
    layer.moe = c.is_moe_layer(l);
    if (layer.moe) {
      layer.experts = load_moe(load, c, p);
    } else {
      layer.mlp = load_mlp(load, p + "mlp.", "gate_proj", "up_proj", "down_proj", h, c.intermediate_size);
    }
    w.layers.push_back(std::move(layer));
  }
  w.final_norm = load.load("model.norm.weight", {h});
  w.lm_head = c.tie_word_embeddings ? w.embed : load.load("lm_head.weight", {c.vocab_size, h});

  RopeValues rope = rope_values(c, max_positions_);
  const std::vector<int64_t> rope_shape{max_positions_, d / 2};
  w.rope.cos = backend.allocate(rope_shape, DType::f32);
  w.rope.sin = backend.allocate(rope_shape, DType::f32);
  backend.upload({rope.cos.data(), DType::f32, rope_shape}, w.rope.cos);
  backend.upload({rope.sin.data(), DType::f32, rope_shape}, w.rope.sin);
}

Model::~Model() = default;

KvCache Model::allocate_kv_cache(int num_blocks, int block_size) const {
  return troupe::allocate_kv_cache(backend_, config_.num_layers, num_blocks, block_size, config_.num_kv_heads,
                                   config_.head_dim);
}

Tensor Model::forward(const StepBatch& batch, const KvCache& cache) {
  const ModelConfig& c = config_;
  Backend& be = backend_;
  const Weights& w = *weights_;
  const DType dt = be.compute_dtype();
  const int64_t t = batch.num_tokens(), h = c.hidden_size;
  if (t == 0) throw std::invalid_argument("Model::forward: empty batch");
  if (batch.block_size != cache.block_size) throw std::invalid_argument("Model::forward: block size differs from the cache's");
  if (batch.max_context_len() > max_positions_)
    throw std::invalid_argument("Model::forward: a sequence of " + std::to_string(batch.max_context_len()) +
                                " tokens exceeds the " + std::to_string(max_positions_) + " positions this model serves");

  auto upload_i32 = [&](const std::vector<int32_t>& v, std::vector<int64_t> shape) {
    Tensor out = be.allocate(shape, DType::i32);
    be.upload({v.data(), DType::i32, std::move(shape)}, out);
    return out;
  };
  AttentionMetadata meta;
  meta.positions = upload_i32(batch.positions, {t});
  meta.slot_mapping = upload_i32(batch.slot_mapping, {t});
  meta.query_start = upload_i32(batch.query_start, {batch.num_seqs() + 1});
  meta.context_lens = upload_i32(batch.context_lens, {batch.num_seqs()});
  meta.block_tables = upload_i32(batch.flat_block_tables(), {batch.num_seqs(), std::max(1, batch.max_blocks_per_seq())});
  meta.num_seqs = batch.num_seqs();
  meta.num_tokens = static_cast<int>(t);
  meta.max_query_len = batch.max_query_len();
  meta.max_context_len = batch.max_context_len();
  meta.block_size = batch.block_size;

  const QkvLayout layout{c.num_heads, c.num_kv_heads, c.head_dim};
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const float eps = static_cast<float>(c.rms_norm_eps);

  Tensor ids = upload_i32(batch.token_ids, {t});
  Tensor residual = be.allocate({t, h}, dt);
  be.embedding(w.embed, ids, residual);
  Tensor x = be.allocate({t, h}, dt);
  Tensor delta = be.allocate({t, h}, dt);
  Tensor qkv = be.allocate({t, layout.width()}, dt);
  Tensor attn = be.allocate({t, layout.q_size()}, dt);

  auto run_mlp = [&](const Mlp& m, const Tensor& in, const Tensor& out) {
    const int64_t inter = m.down.size(1);
    Tensor gate_up = be.allocate({t, 2 * inter}, dt);
    Tensor act = be.allocate({t, inter}, dt);
    be.linear(in, m.gate_up, nullptr, gate_up);
    be.silu_mul(gate_up, act);
    be.linear(act, m.down, nullptr, out);
  };

  for (size_t l = 0; l < w.layers.size(); ++l) {
    const Weights::Layer& layer = w.layers[l];
    if (l == 0) {
      be.rms_norm(residual, layer.input_norm, eps, x);
    } else {
      be.add_rms_norm(residual, delta, layer.input_norm, eps, x);
    }
    be.linear(x, layer.qkv, layer.qkv_bias.defined() ? &layer.qkv_bias : nullptr, qkv);
    if (c.qk_norm) be.qk_norm(qkv, layout, layer.q_norm, layer.k_norm, eps);
    be.rope_store_kv(qkv, layout, meta, w.rope, cache.layers[l]);
    be.attention(qkv, layout, cache.layers[l], meta, scale, attn);
    be.linear(attn, layer.o, layer.o_bias.defined() ? &layer.o_bias : nullptr, delta);
    be.add_rms_norm(residual, delta, layer.post_attention_norm, eps, x);
    if (!layer.moe) {
      run_mlp(layer.mlp, x, delta);
      continue;
    }
    const Moe& m = layer.experts;
    const int k = c.num_experts_per_tok;
    Tensor router_logits = be.allocate({t, c.num_experts}, dt);
    Tensor topk_weights = be.allocate({t, k}, DType::f32);
    Tensor topk_ids = be.allocate({t, k}, DType::i32);
    be.linear(x, m.router, nullptr, router_logits);
    be.moe_route(router_logits, k, c.norm_topk_prob, topk_weights, topk_ids);
    be.moe_experts(x, topk_weights, topk_ids, m.gate_up, m.down, 0, delta);
    if (m.has_shared) {
      Tensor shared = be.allocate({t, h}, dt);
      Tensor gate = be.allocate({t, 1}, dt);
      run_mlp(m.shared, x, shared);
      be.linear(x, m.shared_gate, nullptr, gate);
      be.add_sigmoid_gated(shared, gate, delta);
    }
  }
  be.add(delta, residual);

  // Only the rows that need logits go through the final norm and the LM head.
  const int64_t rows = static_cast<int64_t>(batch.logits_indices.size());
  Tensor picked = be.allocate({rows, h}, dt);
  be.embedding(residual, upload_i32(batch.logits_indices, {rows}), picked);
  Tensor normed = be.allocate({rows, h}, dt);
  be.rms_norm(picked, w.final_norm, eps, normed);
  Tensor logits = be.allocate({rows, c.vocab_size}, dt);
  be.linear(normed, w.lm_head, nullptr, logits);
  return logits;
}

}  // namespace troupe
