#include "engine/model.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "engine/rope.hpp"
#include "engine/weight_slices.hpp"

namespace troupe {
namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

// Reads named tensors (or slices of them) out of the checkpoint into backend memory, checking each
// shape against what the config implies.
class Loader {
 public:
  // `files` null: dummy weights (see Model's constructor).
  Loader(const WeightFiles* files, Backend& backend, const LoadProgress& progress, int num_layers)
      : files_(files), backend_(backend), progress_(progress), total_(files ? files->total_bytes() : 0),
        num_layers_(num_layers) {}

  Backend& backend() { return backend_; }
  uint64_t allocated() const { return allocated_; }

  // The model maker's scales: norms around 1, biases small, embeddings and heads 1/sqrt(hidden),
  // projections 1/sqrt(fan-in) (output projections also 1/sqrt(2 layers)).
  void fill_dummy(const std::string& name, const std::vector<int64_t>& shape, const Tensor& dst, Span rows, Span cols) {
    uint64_t seed = 1469598103934665603ull;
    for (char c : name) seed = (seed ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    auto ends = [&](const char* suffix) {
      const std::string s(suffix);
      return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
    };
    float mean = 0.0f, std = 0.1f;
    if (ends("norm.weight")) {
      mean = 1.0f;
    } else if (!ends(".bias")) {
      std = 1.0f / std::sqrt(static_cast<float>(shape.back()));
      if (ends("o_proj.weight") || ends("down_proj.weight") || ends("w2.weight"))
        std /= std::sqrt(2.0f * static_cast<float>(num_layers_));
    }
    // The slice's place in the whole tensor, so that each rank's slice of a dummy model is the slice
    // of one model, whatever the layout.
    int64_t row_elems = 1;
    for (size_t d = 1; d < shape.size(); ++d) row_elems *= shape[d];
    RandomWindow window;
    window.first = (rows.size() > 0 ? rows.begin : 0) * row_elems;
    if (cols.size() > 0 && cols.size() != shape.back()) {
      window.first += cols.begin;
      window.cols = cols.size();
      window.stride = shape.back();
    }
    backend_.fill_random(dst, seed, mean, std, window);
    done_ += dst.nbytes();
    if (progress_) progress_(done_, total_);
  }

  Tensor allocate(std::vector<int64_t> shape) {
    Tensor t = backend_.allocate(std::move(shape), backend_.compute_dtype());
    allocated_ += t.nbytes();
    return t;
  }

  // Rows `rows` (all when empty) and columns `cols` (all when empty) of the named tensor into dst.
  void put(const std::string& name, const std::vector<int64_t>& full_shape, const Tensor& dst, Span rows = {},
           Span cols = {}) {
    if (!files_) {
      fill_dummy(name, full_shape, dst, rows, cols);
      return;
    }
    HostView v = files_->get(name);
    if (v.shape != full_shape)
      throw WeightError("tensor '" + name + "' has shape " + shape_text(v.shape) + " but the config implies " +
                        shape_text(full_shape));
    if (rows.size() > 0) v = v.rows(rows.begin, rows.end);
    if (cols.size() > 0 && cols.size() != full_shape.back()) {
      // A column slice is strided in the file: gather it into a contiguous host buffer first.
      const int64_t n_rows = v.numel() / full_shape.back(), es = dtype_size(v.dtype);
      staging_.resize(static_cast<size_t>(n_rows * cols.size() * es));
      for (int64_t r = 0; r < n_rows; ++r)
        std::memcpy(staging_.data() + r * cols.size() * es,
                    static_cast<const char*>(v.data) + (r * full_shape.back() + cols.begin) * es, cols.size() * es);
      v = HostView{staging_.data(), v.dtype, {n_rows, cols.size()}};
    }
    if (v.numel() != dst.numel())
      throw WeightError("tensor '" + name + "': the slice holds " + std::to_string(v.numel()) + " elements, " +
                        dst.describe() + " expected");
    backend_.upload(v, dst);
    done_ += v.nbytes();
    if (progress_) progress_(done_, total_);
  }

  Tensor load(const std::string& name, const std::vector<int64_t>& full_shape, Span rows = {}, Span cols = {}) {
    std::vector<int64_t> shape = full_shape;
    if (rows.size() > 0) shape[0] = rows.size();
    if (cols.size() > 0) shape.back() = cols.size();
    Tensor t = allocate(shape);
    put(name, full_shape, t, rows, cols);
    return t;
  }

 private:
  const WeightFiles* files_;
  Backend& backend_;
  const LoadProgress& progress_;
  uint64_t done_ = 0;
  uint64_t total_ = 0;
  uint64_t allocated_ = 0;
  int num_layers_ = 1;
  std::vector<char> staging_;
};

struct Mlp {
  Tensor gate_up;  // [2 I_local, H]
  Tensor down;     // [H, I_local]
};

struct Moe {
  Tensor router;   // [E, H]
  Tensor gate_up;  // [E_local, 2 I_local, H]
  Tensor down;     // [E_local, H, I_local]
  bool has_shared = false;
  Mlp shared;
  Tensor shared_gate;  // [1, H]
};

Mlp load_mlp(Loader& load, const std::string& prefix, const std::string& gate, const std::string& up,
             const std::string& down, int64_t hidden, int64_t inter, Span slice) {
  Mlp m;
  m.gate_up = load.allocate({2 * slice.size(), hidden});
  load.put(prefix + gate + ".weight", {inter, hidden}, m.gate_up.rows(0, slice.size()), slice);
  load.put(prefix + up + ".weight", {inter, hidden}, m.gate_up.rows(slice.size(), 2 * slice.size()), slice);
  m.down = load.load(prefix + down + ".weight", {hidden, inter}, {}, slice);
  return m;
}

Moe load_moe(Loader& load, const ModelConfig& c, const ShardPlan& plan, const std::string& layer) {
  const bool mixtral = c.arch == Architecture::mixtral;
  const std::string block = layer + (mixtral ? "block_sparse_moe." : "mlp.");
  const int64_t h = c.hidden_size, inter = c.moe_intermediate_size, il = plan.expert_mlp.size();
  Moe m;
  m.router = load.load(block + "gate.weight", {c.num_experts, h});
  m.gate_up = load.allocate({plan.experts.size(), 2 * il, h});
  m.down = load.allocate({plan.experts.size(), h, il});
  for (int64_t x = plan.experts.begin; x < plan.experts.end; ++x) {
    const std::string p = block + "experts." + std::to_string(x) + ".";
    const int64_t local = x - plan.experts.begin;
    Tensor gu = m.gate_up.rows(local, local + 1).reshape({2 * il, h});
    load.put(p + (mixtral ? "w1" : "gate_proj") + ".weight", {inter, h}, gu.rows(0, il), plan.expert_mlp);
    load.put(p + (mixtral ? "w3" : "up_proj") + ".weight", {inter, h}, gu.rows(il, 2 * il), plan.expert_mlp);
    load.put(p + (mixtral ? "w2" : "down_proj") + ".weight", {h, inter}, m.down.rows(local, local + 1).reshape({h, il}),
             {}, plan.expert_mlp);
  }
  if (c.has_shared_expert()) {
    m.has_shared = true;
    m.shared = load_mlp(load, block + "shared_expert.", "gate_proj", "up_proj", "down_proj", h,
                        c.shared_expert_intermediate_size, plan.shared_mlp);
    m.shared_gate = load.load(block + "shared_expert_gate.weight", {1, h});
  }
  return m;
}

}  // namespace

struct Model::Weights {
  struct Layer {
    int index = 0;
    Tensor input_norm, post_attention_norm;
    Tensor qkv, qkv_bias, o, o_bias;
    Tensor q_norm, k_norm;
    bool moe = false;
    Mlp mlp;
    Moe experts;
  };
  ShardPlan plan;
  Tensor embed;       // [vocab_rows, H] on the first stage (and the last, when tied)
  Tensor final_norm;  // last stage
  Tensor lm_head;     // [vocab_rows, H] on the last stage
  std::vector<Layer> layers;
  RopeTable rope;
  uint64_t bytes = 0;

  explicit Weights(ShardPlan p) : plan(p) {}
};

void Model::reserve_inputs(int tokens, int seqs, int blocks_per_seq) {
  inputs_.reserve(tokens, seqs, blocks_per_seq);
  reserve_scratch(tokens);
}

void Model::reserve_scratch(int tokens) {
  const Weights::Layer* moe = nullptr;
  for (const Weights::Layer& layer : weights_->layers)
    if (layer.moe) {
      moe = &layer;  // every MoE layer has the same shape
      break;
    }
  if (!moe) return;
  const int k = config_.num_experts_per_tok;
  const Tensor& gate_up = moe->experts.gate_up;
  if (!comms_.moe) {
    backend_.reserve_moe_experts(tokens, k, gate_up, moe->experts.down);
  } else if (gathers_moe_tokens()) {
    // Every rank of the group sees the tokens of all of them, gathered.
    backend_.reserve_moe_experts(int64_t{tokens} * comms_.moe->size(), k, gate_up, moe->experts.down);
  } else {
    // All-to-all: this rank computes the (token, expert) pairs of every rank that go to its experts,
    // at most min(k, its experts) per token, one choice each; the results scatter back onto tokens.
    const int64_t local = std::min<int64_t>(k, gate_up.size(0));
    backend_.reserve_moe_experts(int64_t{tokens} * comms_.moe->size() * local, 1, gate_up, moe->experts.down);
    backend_.reserve_scatter_add_rows(int64_t{tokens} * k, tokens);
  }
}

Model::Model(ModelConfig config, const WeightFiles& files, Backend& backend, int max_positions,
             const LoadProgress& progress, ModelShard shard, ShardComms comms)
    : Model(std::move(config), &files, backend, max_positions, progress, shard, comms) {}

Model::Model(ModelConfig config, const WeightFiles* files, Backend& backend, int max_positions,
             const LoadProgress& progress, ModelShard shard, ShardComms comms)
    : config_(std::move(config)),
      shard_(shard),
      comms_(comms),
      backend_(backend),
      max_positions_(max_positions > 0 ? max_positions : config_.max_position_embeddings),
      layers_(stage_layers(config_.num_layers, shard.layout.pipeline_parallel_size, shard.pp_rank)),
      weights_(std::make_unique<Weights>(ShardPlan(config_, shard))),
      inputs_(backend) {
  const ModelConfig& c = config_;
  Loader load(files, backend, progress, config_.num_layers);
  Weights& w = *weights_;
  const ShardPlan& plan = w.plan;
  const int64_t h = c.hidden_size, d = c.head_dim;

  // The vocabulary slice, zero-padded so every rank holds the same number of rows.
  auto load_vocab = [&](const std::string& name) {
    Tensor t = load.allocate({plan.vocab_rows, h});
    backend.zero(t);
    if (plan.vocab.size() > 0) load.put(name, {c.vocab_size, h}, t.rows(0, plan.vocab.size()), plan.vocab);
    return t;
  };
  if (shard.first_stage() || (shard.last_stage() && c.tie_word_embeddings)) w.embed = load_vocab("model.embed_tokens.weight");

  const Span q_rows{plan.q_heads.begin * d, plan.q_heads.end * d};
  const Span kv_rows{plan.kv_heads.begin * d, plan.kv_heads.end * d};
  const int64_t q = q_rows.size(), kv = kv_rows.size();
  for (int l = layers_.begin; l < layers_.end; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Weights::Layer layer;
    layer.index = l;
    layer.input_norm = load.load(p + "input_layernorm.weight", {h});
    layer.post_attention_norm = load.load(p + "post_attention_layernorm.weight", {h});
    const std::string a = p + "self_attn.";
    layer.qkv = load.allocate({q + 2 * kv, h});
    load.put(a + "q_proj.weight", {c.q_size(), h}, layer.qkv.rows(0, q), q_rows);
    load.put(a + "k_proj.weight", {c.kv_size(), h}, layer.qkv.rows(q, q + kv), kv_rows);
    load.put(a + "v_proj.weight", {c.kv_size(), h}, layer.qkv.rows(q + kv, q + 2 * kv), kv_rows);
    if (c.attention_bias) {
      layer.qkv_bias = load.allocate({q + 2 * kv});
      load.put(a + "q_proj.bias", {c.q_size()}, layer.qkv_bias.rows(0, q), q_rows);
      load.put(a + "k_proj.bias", {c.kv_size()}, layer.qkv_bias.rows(q, q + kv), kv_rows);
      load.put(a + "v_proj.bias", {c.kv_size()}, layer.qkv_bias.rows(q + kv, q + 2 * kv), kv_rows);
    }
    layer.o = load.load(a + "o_proj.weight", {h, c.q_size()}, {}, q_rows);
    // A row-parallel layer's bias is added once, by tensor-parallel rank 0, before the all-reduce.
    if (c.attention_output_bias && shard.tp_rank == 0) layer.o_bias = load.load(a + "o_proj.bias", {h});
    if (c.qk_norm) {
      layer.q_norm = load.load(a + "q_norm.weight", {d});
      layer.k_norm = load.load(a + "k_norm.weight", {d});
    }
    layer.moe = c.is_moe_layer(l);
    if (layer.moe) {
      layer.experts = load_moe(load, c, plan, p);
    } else {
      layer.mlp = load_mlp(load, p + "mlp.", "gate_proj", "up_proj", "down_proj", h, c.intermediate_size, plan.mlp);
    }
    w.layers.push_back(std::move(layer));
  }
  if (shard.last_stage()) {
    w.final_norm = load.load("model.norm.weight", {h});
    w.lm_head = c.tie_word_embeddings ? w.embed : load_vocab("lm_head.weight");
  }

  RopeValues rope = rope_values(c, max_positions_);
  const std::vector<int64_t> rope_shape{max_positions_, d / 2};
  w.rope.cos = backend.allocate(rope_shape, DType::f32);
  w.rope.sin = backend.allocate(rope_shape, DType::f32);
  backend.upload({rope.cos.data(), DType::f32, rope_shape}, w.rope.cos);
  backend.upload({rope.sin.data(), DType::f32, rope_shape}, w.rope.sin);
  w.bytes = load.allocated();
}

Model::~Model() = default;

int Model::local_heads() const { return static_cast<int>(weights_->plan.q_heads.size()); }
int Model::local_kv_heads() const { return static_cast<int>(weights_->plan.kv_heads.size()); }
uint64_t Model::weight_bytes() const { return weights_->bytes; }

KvCache Model::allocate_kv_cache(int num_blocks, int block_size) const {
  return troupe::allocate_kv_cache(backend_, layers_.end - layers_.begin, num_blocks, block_size, local_kv_heads(),
                                   config_.head_dim);
}

namespace {

// One forward pass's scratch: the batch's metadata on the device and helpers shared by the layers.
struct Pass {
  Backend& be;
  DType dt;
  int64_t t;
  // Tokens of each rank of the MoE group: the same at every layer, so gathered once per pass (a
  // gather of counts waits for the host; one per layer cost each step ~48 round trips).
  std::vector<int64_t> moe_counts;

  Tensor upload_i32(const std::vector<int32_t>& v) {
    Tensor out = be.allocate({static_cast<int64_t>(v.size())}, DType::i32);
    be.upload({v.data(), DType::i32, {static_cast<int64_t>(v.size())}}, out);
    return out;
  }
  Tensor upload_f32(const std::vector<float>& v, int64_t cols) {
    const int64_t rows = static_cast<int64_t>(v.size()) / cols;
    Tensor out = be.allocate({rows, cols}, DType::f32);
    be.upload({v.data(), DType::f32, {rows, cols}}, out);
    return out;
  }
};

}  // namespace

Tensor Model::forward(const StepBatch& batch, const KvCache& cache, const ForwardHooks& hooks, Tensor* hidden) {
  prepare(batch);
  return run(cache, hooks, hidden);
}

void Model::prepare(const StepBatch& batch) {
  if (batch.max_context_len() > max_positions_)
    throw std::invalid_argument("Model::forward: a sequence of " + std::to_string(batch.max_context_len()) +
                                " tokens exceeds the " + std::to_string(max_positions_) + " positions this model serves");
  inputs_.prepare(batch, weights_->plan.vocab.begin, weights_->plan.vocab.end);
}

Tensor Model::run(const KvCache& cache, const ForwardHooks& hooks, Tensor* hidden) {
  const ModelConfig& c = config_;
  Backend& be = backend_;
  const Weights& w = *weights_;
  const ShardPlan& plan = w.plan;
  const DType dt = be.compute_dtype();
  const StepInputs& in = inputs_.current();
  const AttentionMetadata& meta = in.meta;
  const int64_t t = meta.num_tokens, h = c.hidden_size;
  const int tp = shard_.layout.tensor_parallel_size, dp = shard_.layout.data_parallel_size;
  if (meta.block_size != cache.block_size) throw std::invalid_argument("Model::forward: block size differs from the cache's");
  Pass pass{be, dt, t};

  const QkvLayout layout{local_heads(), local_kv_heads(), c.head_dim};
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const float eps = static_cast<float>(c.rms_norm_eps);

  Tensor residual = be.allocate({t, h}, dt);
  if (shard_.first_stage()) {
    // Ids outside this rank's vocabulary slice embed as zeros; the all-reduce fills them in.
    be.embedding(w.embed, in.token_ids, residual);
    if (comms_.tp) comms_.tp->all_reduce(residual);
  } else {
    comms_.prev->recv(residual, 0);
  }
  Tensor x = be.allocate({t, h}, dt);
  Tensor delta = be.allocate({t, h}, dt);
  Tensor qkv = be.allocate({t, layout.width()}, dt);
  Tensor attn = be.allocate({t, layout.q_size()}, dt);

  auto run_mlp = [&](const Mlp& m, const Tensor& in, const Tensor& out) {
    const int64_t inter = m.down.size(1), rows = in.size(0);
    Tensor gate_up = be.allocate({rows, 2 * inter}, dt);
    Tensor act = be.allocate({rows, inter}, dt);
    be.linear(in, m.gate_up, nullptr, gate_up);
    be.silu_mul_linear(gate_up, m.down, act, out);
  };
  auto span = [&](const char* name, bool begin) {
    if (hooks.span) hooks.span(name, begin);
  };

  // The routed experts' contribution to this rank's tokens, before the tensor-parallel all-reduce.
  auto run_moe = [&](const Weights::Layer& layer) {
    const Moe& m = layer.experts;
    const int k = c.num_experts_per_tok;
    auto route = [&](const Tensor& in, Tensor& weights, Tensor& ids) {
      const int64_t rows = in.size(0);
      Tensor logits = be.allocate({rows, c.num_experts}, dt);
      weights = be.allocate({rows, k}, DType::f32);
      ids = be.allocate({rows, k}, DType::i32);
      be.linear(in, m.router, nullptr, logits);
      if (hooks.router_logits) {
        std::vector<float> host(static_cast<size_t>(logits.numel()));
        be.download(logits, host.data());
        hooks.router_logits(layer.index, host);
      }
      be.moe_route(logits, k, c.norm_topk_prob, weights, ids);
    };
    auto report_routing = [&](const Tensor& ids) {
      if (!hooks.routing) return;
      std::vector<int32_t> host(static_cast<size_t>(ids.numel()));
      be.download(ids, host.data());
      hooks.routing(layer.index, host);
    };
    const int expert_begin = static_cast<int>(plan.experts.begin);
    if (dp == 1 || !comms_.moe) {
      // Tokens are the same on every rank of the group: each adds what its experts (or expert slices)
      // give, and the tensor-parallel all-reduce sums the ranks.
      Tensor weights, ids;
      route(x, weights, ids);
      report_routing(ids);
      be.moe_experts(x, weights, ids, m.gate_up, m.down, expert_begin, delta);
      return;
    }
    Communicator& group = *comms_.moe;
    const int size = group.size(), me = group.rank();
    // With dp > 1 the stage's tp × dp ranks hold the experts together. Each data-parallel rank's
    // tokens are present on its tp ranks; tensor-parallel rank 0 speaks for them.
    const bool speaker = shard_.tp_rank == 0;
    const int64_t mine = speaker ? t : 0;
    be.zero(delta);
    if (gathers_moe_tokens()) {
      if (pass.moe_counts.empty()) {
        pass.moe_counts.resize(size);
        group.all_gather_counts(std::span(&mine, 1), pass.moe_counts);
      }
      const std::vector<int64_t>& counts = pass.moe_counts;
      span("moe_dispatch", true);
      int64_t total = 0;
      for (int64_t n : counts) total += n;
      Tensor gathered = be.allocate({total, h}, dt);
      group.all_gather(x.rows(0, mine), gathered, counts);
      span("moe_dispatch", false);
      Tensor weights, ids;
      route(gathered, weights, ids);
      int64_t offset = 0;
      for (int q = 0; q < me; ++q) offset += counts[q];
      if (speaker) report_routing(ids.rows(offset, offset + mine));
      Tensor partial = be.allocate({total, h}, dt);
      be.moe_experts(gathered, weights, ids, m.gate_up, m.down, expert_begin, partial);
      span("moe_combine", true);
      group.reduce_scatter(partial, delta.rows(0, mine), counts);
      span("moe_combine", false);
      return;
    }
    // Expert parallel across data-parallel ranks: each (token, expert) pair travels to the rank that
    // holds the expert and its result comes back (all-to-all dispatch and combine).
    Tensor weights, ids;
    route(x, weights, ids);
    std::vector<int32_t> host_ids(static_cast<size_t>(speaker ? t * k : 0));
    std::vector<float> host_weights(host_ids.size());
    if (speaker) {
      be.download(ids, host_ids.data());
      be.download(weights, host_weights.data());
      if (hooks.routing) hooks.routing(layer.index, host_ids);
    }
    span("moe_dispatch", true);
    const int64_t per_rank = c.num_experts / size;
    std::vector<int64_t> send(size, 0);
    for (int32_t e : host_ids) ++send[e / per_rank];
    std::vector<int32_t> pair_token, pair_expert;
    std::vector<float> pair_weight;
    for (int dest = 0; dest < size; ++dest) {
      for (size_t i = 0; i < host_ids.size(); ++i) {
        if (host_ids[i] / per_rank != dest) continue;
        pair_token.push_back(static_cast<int32_t>(i / k));
        pair_expert.push_back(host_ids[i]);
        pair_weight.push_back(host_weights[i]);
      }
    }
    std::vector<int64_t> matrix(static_cast<size_t>(size) * size);
    group.all_gather_counts(send, matrix);
    std::vector<int64_t> recv(size);
    int64_t received = 0;
    for (int q = 0; q < size; ++q) received += recv[q] = matrix[q * size + me];
    const int64_t pairs = static_cast<int64_t>(pair_token.size());
    Tensor send_x = be.allocate({pairs, h}, dt);
    be.embedding(x, pass.upload_i32(pair_token), send_x);
    Tensor send_ids = pass.upload_i32(pair_expert).reshape({pairs, 1});
    Tensor send_w = pass.upload_f32(pair_weight, 1);
    Tensor recv_x = be.allocate({received, h}, dt);
    Tensor recv_ids = be.allocate({received, 1}, DType::i32);
    Tensor recv_w = be.allocate({received, 1}, DType::f32);
    group.all_to_all(send_x, send, recv_x, recv);
    group.all_to_all(send_ids, send, recv_ids, recv);
    group.all_to_all(send_w, send, recv_w, recv);
    span("moe_dispatch", false);
    Tensor y = be.allocate({received, h}, dt);
    be.moe_experts(recv_x, recv_w, recv_ids, m.gate_up, m.down, expert_begin, y);
    span("moe_combine", true);
    Tensor back = be.allocate({pairs, h}, dt);
    group.all_to_all(y, recv, back, send);
    be.scatter_add_rows(back, pass.upload_i32(pair_token), delta);
    span("moe_combine", false);
  };

  // The residual stream. While `pending`, delta holds a sublayer's output not yet added to residual,
  // which the next norm adds (add_rms_norm): with tensor parallelism where the all-reduce does not add
  // (NCCL's), or where the backend would not fuse the add into the sublayer's last projection; else that
  // projection adds its output itself, and the next norm and the projection after it are one backend
  // call, which a backend may fuse. Which way a step goes depends only on its token count, so that
  // steps of many tokens keep the arithmetic of the unfused ops.
  bool pending = false;
  // With a pushed all-reduce (engine/pushed_all_reduce.hpp), the projection that ends a sublayer
  // sends its output to the peers as it computes it, and only the sum's gather into the residual
  // follows it.
  const PushedAllReduce* pushed = comms_.tp ? comms_.tp->pushed_all_reduce(delta) : nullptr;
  auto pushes = [&](const Tensor& weight) { return pushed && be.pushes_output(t, weight); };
  // Where the backend normalises in the gather (gather_normalises), the gather also writes the next
  // norm's output into x, and x_normed_by says with which weight, until the norm's consumer takes it.
  const bool gather_norms = pushed && be.gather_normalises(t);
  const Tensor* x_normed_by = nullptr;
  auto gather = [&](const Tensor* next_norm) {
    if (gather_norms && next_norm) {
      be.gather_add_rms_norm(delta, residual, *pushed, *next_norm, eps, x);
      x_normed_by = next_norm;
    } else {
      be.gather_add(delta, residual, *pushed);
    }
  };
  auto take_normed = [&](const Tensor& norm) {
    if (x_normed_by != &norm) return false;
    x_normed_by = nullptr;
    return true;
  };
  auto add_in_projection = [&](const Tensor& weight) { return !comms_.tp && be.fuses_residual_add(t, weight); };
  auto norm_into_x = [&](const Tensor& norm) {
    if (take_normed(norm)) return;
    if (pending)
      be.add_rms_norm(residual, delta, norm, eps, x);
    else
      be.rms_norm(residual, norm, eps, x);
    pending = false;
  };
  auto norm_linear = [&](const Tensor& norm, const Tensor& weight, const Tensor* bias, const Tensor& out) {
    if (take_normed(norm)) {
      be.normed_linear(x, weight, bias, out);
    } else if (pending) {
      norm_into_x(norm);
      be.linear(x, weight, bias, out);
    } else {
      be.rms_norm_linear(residual, norm, eps, weight, bias, x, out);
    }
  };
  // With tensor parallelism the all-reduce adds the ranks' sum into the residual itself where the
  // communicator fuses that (the peer all-reduce kernel): one kernel fewer per sublayer, and the next
  // norm fuses into its projection as without tensor parallelism.
  auto delta_complete = [&] {
    if (comms_.tp && comms_.tp->fuses_all_reduce_add(delta)) {
      comms_.tp->all_reduce_add(delta, residual);
      return;
    }
    if (comms_.tp) comms_.tp->all_reduce(delta);
    pending = true;
  };
  auto bias_of = [](const Tensor& b) { return b.defined() ? &b : nullptr; };

  for (size_t li = 0; li < w.layers.size(); ++li) {
    const Weights::Layer& layer = w.layers[li];
    norm_linear(layer.input_norm, layer.qkv, bias_of(layer.qkv_bias), qkv);
    // qkv is not read after this (the next layer's projection overwrites it): the backend may leave
    // q and k unrotated there.
    be.rope_store_kv_attention(qkv, layout, meta, w.rope, cache.layers[li], scale, attn,
                               c.qk_norm ? &layer.q_norm : nullptr, c.qk_norm ? &layer.k_norm : nullptr, eps);
    if (add_in_projection(layer.o)) {
      be.linear_add(attn, layer.o, bias_of(layer.o_bias), delta, residual);
    } else if (pushes(layer.o)) {
      be.linear_push(attn, layer.o, bias_of(layer.o_bias), delta, *pushed);
      gather(&layer.post_attention_norm);
    } else {
      be.linear(attn, layer.o, bias_of(layer.o_bias), delta);
      delta_complete();
    }
    if (!layer.moe) {
      const Mlp& m = layer.mlp;
      Tensor gate_up = be.allocate({t, 2 * m.down.size(1)}, dt);
      Tensor act = be.allocate({t, m.down.size(1)}, dt);
      norm_linear(layer.post_attention_norm, m.gate_up, nullptr, gate_up);
      if (add_in_projection(m.down)) {
        be.silu_mul_linear_add(gate_up, m.down, act, delta, residual);
      } else if (pushes(m.down)) {
        be.silu_mul_linear_push(gate_up, m.down, delta, *pushed);
        gather(li + 1 < w.layers.size() ? &w.layers[li + 1].input_norm : nullptr);
      } else {
        be.silu_mul_linear(gate_up, m.down, act, delta);
        delta_complete();
      }
    } else {
      norm_into_x(layer.post_attention_norm);
      run_moe(layer);
      const Moe& m = layer.experts;
      if (m.has_shared) {
        Tensor shared = be.allocate({t, h}, dt);
        Tensor gate = be.allocate({t, 1}, dt);
        run_mlp(m.shared, x, shared);
        be.linear(x, m.shared_gate, nullptr, gate);
        be.add_sigmoid_gated(shared, gate, delta);
      }
      delta_complete();
    }
  }
  if (pending) be.add(delta, residual);
  if (!shard_.last_stage()) {
    comms_.next->send(residual, 1);
    return {};
  }

  if (hidden && in.num_embeds > 0) {
    const int64_t n = in.num_embeds;
    Tensor picked = be.allocate({n, h}, dt);
    be.embedding(residual, in.embed_indices, picked);
    *hidden = be.allocate({n, h}, dt);
    be.rms_norm(picked, w.final_norm, eps, *hidden);
  }
  // Only the rows that need logits go through the final norm and the LM head.
  const int64_t rows = in.num_logits;
  // Rows that give logits are in increasing order, so as many as the step has tokens (decode) are all
  // of them, in order: no gather.
  Tensor picked = rows == t ? residual : be.allocate({rows, h}, dt);
  if (rows != t) be.embedding(residual, in.logits_indices, picked);
  Tensor normed = be.allocate({rows, h}, dt);
  Tensor local = be.allocate({rows, plan.vocab_rows}, dt);
  be.rms_norm_linear(picked, w.final_norm, eps, w.lm_head, nullptr, normed, local);
  if (!comms_.tp) return local;
  Tensor logits = be.allocate({rows, c.vocab_size}, dt);
  if (comms_.tp->gathers_columns(local, logits)) {
    comms_.tp->all_gather_columns(local, logits);
    return logits;
  }
  Tensor stacked = be.allocate({tp, rows, plan.vocab_rows}, dt);
  std::vector<int64_t> each(tp, rows);
  comms_.tp->all_gather(local, stacked.reshape({tp * rows, plan.vocab_rows}), each);
  be.unstack_columns(stacked, logits);
  return logits;
}

}  // namespace troupe
