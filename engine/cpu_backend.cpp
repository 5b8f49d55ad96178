#include "engine/cpu_backend.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace troupe {
namespace {

void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string("cpu backend, ") + op + ": " + what);
}

void require_f32(const Tensor& t, const char* op) {
  require(t.dtype() == DType::f32 && t.device() == Device::cpu, op, "expected an f32 cpu tensor, got " + t.describe());
}

void require_i32(const Tensor& t, const char* op) {
  require(t.dtype() == DType::i32 && t.device() == Device::cpu, op, "expected an i32 cpu tensor, got " + t.describe());
}

float dot(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

float silu(float x) { return x / (1.0f + std::exp(-x)); }

// An approximately normal value with unit variance from a counter: four 16-bit uniforms of one
// splitmix64 draw, summed and centred (the same recipe the CUDA backend's dummy weights use).
float unit_normal(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  float sum = 0.0f;
  for (int k = 0; k < 4; ++k) sum += static_cast<float>((z >> (16 * k)) & 0xFFFF) / 65536.0f;
  return (sum - 2.0f) * 1.7320508f;
}

void rms_norm_row(const float* x, const float* w, float eps, int64_t n, float* out) {
  float ss = dot(x, x, n);
  float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * inv);
}

// y[N] = W[N, K] · x[K]
void matvec(const float* w, const float* x, int64_t n, int64_t k, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = dot(w + i * k, x, k);
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(CpuBackendOptions options) : options_(options) {}
  Device device() const override { return Device::cpu; }
  DType compute_dtype() const override { return DType::f32; }

  Tensor allocate(std::vector<int64_t> shape, DType dtype) override {
    int64_t n = 1;
    for (int64_t s : shape) {
      require(s >= 0, "allocate", "negative dimension");
      n *= s;
    }
    size_t bytes = std::max<size_t>(static_cast<size_t>(n) * dtype_size(dtype), 64);
    void* p = ::operator new(bytes, std::align_val_t(64));
    std::shared_ptr<void> storage(p, [](void* q) { ::operator delete(q, std::align_val_t(64)); });
    return Tensor(p, dtype, std::move(shape), Device::cpu, std::move(storage));
  }

  void upload(const HostView& src, const Tensor& dst) override {
    require(src.numel() == dst.numel(), "upload", "element count differs: " + std::to_string(src.numel()) + " into " +
                                                      dst.describe());
    if (src.numel() == 0) return;
    if (src.dtype == dst.dtype()) {
      std::memcpy(dst.data(), src.data, dst.nbytes());
    } else if (dst.dtype() == DType::f32) {
      convert_to_f32(src.data, src.dtype, dst.as<float>(), static_cast<size_t>(src.numel()));
    } else {
      require(false, "upload", std::string("cannot convert ") + std::string(dtype_name(src.dtype)) + " to " +
                                   std::string(dtype_name(dst.dtype())));
    }
  }

  void download(const Tensor& src, void* dst) override {
    if (src.numel() == 0) return;
    if (src.dtype() == DType::f16 || src.dtype() == DType::bf16) {
      convert_to_f32(src.data(), src.dtype(), static_cast<float*>(dst), static_cast<size_t>(src.numel()));
    } else {
      std::memcpy(dst, src.data(), src.nbytes());
    }
  }

  void synchronize() override {}

  void fill_random(const Tensor& t, uint64_t seed, float mean, float std, RandomWindow window) override {
    require_f32(t, "fill_random");
    float* p = t.as<float>();
    for (int64_t i = 0; i < t.numel(); ++i)
      p[i] = mean + std * unit_normal(seed, static_cast<uint64_t>(window.index(i)));
  }

  void embedding(const Tensor& table, const Tensor& ids, const Tensor& out) override {
    require_f32(table, "embedding");
    require_i32(ids, "embedding");
    require_f32(out, "embedding");
    const int64_t rows = table.size(0), width = table.row_numel();
    require(out.numel() == ids.numel() * width, "embedding", "output shape " + out.describe());
    const int32_t* id = ids.as<int32_t>();
    for (int64_t t = 0; t < ids.numel(); ++t) {
      require(id[t] < rows, "embedding", "id " + std::to_string(id[t]) + " outside [0, " + std::to_string(rows) + ")");
      if (id[t] < 0) {
        std::fill(out.as<float>() + t * width, out.as<float>() + (t + 1) * width, 0.0f);
      } else {
        std::memcpy(out.as<float>() + t * width, table.as<float>() + id[t] * width, width * sizeof(float));
      }
    }
  }

  void scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& out) override {
    require_f32(src, "scatter_add_rows");
    require_i32(index, "scatter_add_rows");
    require_f32(out, "scatter_add_rows");
    const int64_t width = out.row_numel(), rows = out.size(0);
    require(src.numel() == index.numel() * width, "scatter_add_rows", "shapes " + src.describe() + ", " + out.describe());
    for (int64_t i = 0; i < index.numel(); ++i) {
      const int32_t r = index.as<int32_t>()[i];
      require(r >= 0 && r < rows, "scatter_add_rows", "row " + std::to_string(r) + " outside the output");
      float* o = out.as<float>() + r * width;
      const float* a = src.as<float>() + i * width;
      for (int64_t e = 0; e < width; ++e) o[e] += a[e];
    }
  }

  void unstack_columns(const Tensor& stacked, const Tensor& out) override {
    require_f32(stacked, "unstack_columns");
    require_f32(out, "unstack_columns");
    require(stacked.rank() == 3 && out.rank() == 2 && stacked.size(1) == out.size(0), "unstack_columns",
            "shapes " + stacked.describe() + ", " + out.describe());
    const int64_t parts = stacked.size(0), rows = stacked.size(1), cols = stacked.size(2), width = out.size(1);
    require(width <= parts * cols, "unstack_columns", "output wider than the stack");
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < width; ++c) out.as<float>()[r * width + c] = stacked.as<float>()[((c / cols) * rows + r) * cols + c % cols];
    }
  }

  void zero(const Tensor& t) override {
    if (t.nbytes() > 0) std::memset(t.data(), 0, t.nbytes());
  }

  void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) override {
    require_f32(x, "rms_norm");
    require_f32(out, "rms_norm");
    const int64_t n = weight.numel();
    require(x.numel() % n == 0 && out.numel() == x.numel(), "rms_norm", "shapes " + x.describe() + ", " + weight.describe());
    for (int64_t r = 0; r < x.numel() / n; ++r) rms_norm_row(x.as<float>() + r * n, weight.as<float>(), eps, n, out.as<float>() + r * n);
  }

  void add_rms_norm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps, const Tensor& out) override {
    add(x, residual);
    rms_norm(residual, weight, eps, out);
  }

  void linear(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& out) override {
    require_f32(x, "linear");
    require_f32(w, "linear");
    require_f32(out, "linear");
    const int64_t n = w.size(0), k = w.row_numel(), t = x.numel() / k;
    require(x.numel() == t * k && out.numel() == t * n, "linear",
            "x " + x.describe() + ", w " + w.describe() + ", out " + out.describe());
    require(!bias || bias->numel() == n, "linear", "bias size");
    const float* xp = x.as<float>();
    const float* wp = w.as<float>();
    float* op = out.as<float>();
    // Four activation rows per pass over W, so each weight row is reused from L1.
    constexpr int64_t tile = 4;
    for (int64_t t0 = 0; t0 < t; t0 += tile) {
      const int64_t tb = std::min(tile, t - t0);
      for (int64_t j = 0; j < n; ++j) {
        const float b = bias ? bias->as<float>()[j] : 0.0f;
        for (int64_t i = 0; i < tb; ++i) op[(t0 + i) * n + j] = dot(xp + (t0 + i) * k, wp + j * k, k) + b;
      }
    }
  }

  void silu_mul(const Tensor& gate_up, const Tensor& out) override {
    require_f32(gate_up, "silu_mul");
    require_f32(out, "silu_mul");
    const int64_t i2 = gate_up.size(-1), inter = i2 / 2, t = gate_up.numel() / i2;
    require(out.numel() == t * inter, "silu_mul", "shapes " + gate_up.describe() + ", " + out.describe());
    for (int64_t r = 0; r < t; ++r) {
      const float* g = gate_up.as<float>() + r * i2;
      float* o = out.as<float>() + r * inter;
      for (int64_t i = 0; i < inter; ++i) o[i] = silu(g[i]) * g[inter + i];
    }
  }

  bool fuses_residual_add(int64_t tokens, const Tensor& w) const override {
    (void)tokens, (void)w;
    return options_.fuse_residual_add;
  }

  void add(const Tensor& x, const Tensor& inout) override {
    require_f32(x, "add");
    require_f32(inout, "add");
    require(x.numel() == inout.numel(), "add", "shapes " + x.describe() + ", " + inout.describe());
    float* o = inout.as<float>();
    const float* a = x.as<float>();
    for (int64_t i = 0; i < x.numel(); ++i) o[i] += a[i];
  }

  void qk_norm(const Tensor& qkv, const QkvLayout& layout, const Tensor& q_weight, const Tensor& k_weight,
               float eps) override {
    require_f32(qkv, "qk_norm");
    const int64_t width = layout.width(), d = layout.head_dim, t = qkv.numel() / width;
    for (int64_t r = 0; r < t; ++r) {
      float* row = qkv.as<float>() + r * width;
      for (int h = 0; h < layout.num_heads; ++h) rms_norm_row(row + h * d, q_weight.as<float>(), eps, d, row + h * d);
      float* k = row + layout.q_size();
      for (int h = 0; h < layout.num_kv_heads; ++h) rms_norm_row(k + h * d, k_weight.as<float>(), eps, d, k + h * d);
    }
  }

  void rope_store_kv(const Tensor& qkv, const QkvLayout& layout, const AttentionMetadata& meta, const RopeTable& rope,
                     const KvLayer& cache) override {
    require_f32(qkv, "rope_store_kv");
    require_i32(meta.positions, "rope_store_kv");
    require_i32(meta.slot_mapping, "rope_store_kv");
    const int64_t width = layout.width(), d = layout.head_dim, half = d / 2;
    const int64_t max_pos = rope.cos.size(0);
    const int64_t slots = cache.k.size(0) * cache.k.size(1);
    for (int64_t t = 0; t < meta.num_tokens; ++t) {
      const int32_t pos = meta.positions.as<int32_t>()[t];
      require(pos >= 0 && pos < max_pos, "rope_store_kv", "position " + std::to_string(pos) + " beyond the rope table");
      const float* c = rope.cos.as<float>() + pos * half;
      const float* s = rope.sin.as<float>() + pos * half;
      float* row = qkv.as<float>() + t * width;
      auto rotate = [&](float* x) {
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = x[i], x2 = x[i + half];
          x[i] = x1 * c[i] - x2 * s[i];
          x[i + half] = x2 * c[i] + x1 * s[i];
        }
      };
      for (int h = 0; h < layout.num_heads + layout.num_kv_heads; ++h) rotate(row + h * d);
      const int32_t slot = meta.slot_mapping.as<int32_t>()[t];
      if (slot < 0) continue;  // a padding token: nothing to cache
      require(slot < slots, "rope_store_kv", "slot " + std::to_string(slot) + " outside the cache");
      const int64_t kv = layout.kv_size();
      std::memcpy(cache.k.as<float>() + slot * kv, row + layout.q_size(), kv * sizeof(float));
      std::memcpy(cache.v.as<float>() + slot * kv, row + layout.q_size() + kv, kv * sizeof(float));
    }
  }

  void attention(const Tensor& qkv, const QkvLayout& layout, const KvLayer& cache, const AttentionMetadata& meta,
                 float scale, const Tensor& out) override {
    require_f32(qkv, "attention");
    require_f32(out, "attention");
    const int64_t width = layout.width(), d = layout.head_dim, kv = layout.kv_size();
    const int group = layout.num_heads / layout.num_kv_heads;
    const int bs = meta.block_size;
    const int64_t max_blocks = meta.block_tables.size(1);
    const int32_t* starts = meta.query_start.as<int32_t>();
    std::vector<float> scores(static_cast<size_t>(meta.max_context_len));
    for (int s = 0; s < meta.num_seqs; ++s) {
      const int32_t ctx = meta.context_lens.as<int32_t>()[s];
      const int32_t q0 = starts[s], qn = starts[s + 1] - starts[s];
      require(qn <= ctx && ctx <= meta.max_context_len, "attention", "context shorter than the query");
      const int32_t* table = meta.block_tables.as<int32_t>() + s * max_blocks;
      auto slot_of = [&](int j) { return static_cast<int64_t>(table[j / bs]) * bs + j % bs; };
      for (int i = 0; i < qn; ++i) {
        const int last = ctx - qn + i;  // causal: this token sees keys 0..last
        const float* row = qkv.as<float>() + (q0 + i) * width;
        float* o = out.as<float>() + (q0 + i) * layout.q_size();
        for (int h = 0; h < layout.num_heads; ++h) {
          const float* q = row + h * d;
          const int64_t g = h / group;
          float mx = -INFINITY;
          for (int j = 0; j <= last; ++j) {
            scores[j] = dot(q, cache.k.as<float>() + slot_of(j) * kv + g * d, d) * scale;
            mx = std::max(mx, scores[j]);
          }
          float sum = 0.0f;
          for (int j = 0; j <= last; ++j) sum += scores[j] = std::exp(scores[j] - mx);
          float* oh = o + h * d;
          std::fill(oh, oh + d, 0.0f);
          for (int j = 0; j <= last; ++j) {
            const float p = scores[j] / sum;
            const float* v = cache.v.as<float>() + slot_of(j) * kv + g * d;
            for (int64_t e = 0; e < d; ++e) oh[e] += p * v[e];
          }
        }
      }
    }
  }

  void moe_route(const Tensor& router_logits, int top_k, bool renormalize, const Tensor& topk_weights,
                 const Tensor& topk_ids) override {
    require_f32(router_logits, "moe_route");
    require_f32(topk_weights, "moe_route");
    require_i32(topk_ids, "moe_route");
    const int64_t e = router_logits.size(-1), t = router_logits.numel() / e;
    require(top_k >= 1 && top_k <= e && topk_ids.numel() == t * top_k, "moe_route", "top_k or output shape");
    std::vector<float> p(static_cast<size_t>(e));
    std::vector<int32_t> order(static_cast<size_t>(e));
    for (int64_t r = 0; r < t; ++r) {
      const float* l = router_logits.as<float>() + r * e;
      const float mx = *std::max_element(l, l + e);
      float sum = 0.0f;
      for (int64_t i = 0; i < e; ++i) sum += p[i] = std::exp(l[i] - mx);
      for (int64_t i = 0; i < e; ++i) p[i] /= sum;
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + top_k, order.end(),
                        [&](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
      float chosen = 0.0f;
      for (int j = 0; j < top_k; ++j) chosen += p[order[j]];
      for (int j = 0; j < top_k; ++j) {
        topk_ids.as<int32_t>()[r * top_k + j] = order[j];
        topk_weights.as<float>()[r * top_k + j] = renormalize ? p[order[j]] / chosen : p[order[j]];
      }
    }
  }

  void moe_experts(const Tensor& x, const Tensor& topk_weights, const Tensor& topk_ids, const Tensor& gate_up,
                   const Tensor& down, int expert_begin, const Tensor& out) override {
    require_f32(x, "moe_experts");
    require_f32(out, "moe_experts");
    require_f32(gate_up, "moe_experts");
    require_f32(down, "moe_experts");
    const int64_t experts = gate_up.size(0), i2 = gate_up.size(1), h = gate_up.size(2), inter = i2 / 2;
    require(down.size(0) == experts && down.size(1) == h && down.size(2) == inter, "moe_experts", "expert shapes");
    const int64_t t = x.numel() / h;
    if (t == 0) return;
    const int64_t k = topk_ids.numel() / t;
    std::vector<float> gu(static_cast<size_t>(i2)), act(static_cast<size_t>(inter)), y(static_cast<size_t>(h));
    std::fill(out.as<float>(), out.as<float>() + out.numel(), 0.0f);
    for (int64_t r = 0; r < t; ++r) {
      const float* xr = x.as<float>() + r * h;
      float* o = out.as<float>() + r * h;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t local = topk_ids.as<int32_t>()[r * k + j] - expert_begin;
        if (local < 0 || local >= experts) continue;  // another rank's expert
        matvec(gate_up.as<float>() + local * i2 * h, xr, i2, h, gu.data());
        for (int64_t i = 0; i < inter; ++i) act[i] = silu(gu[i]) * gu[inter + i];
        matvec(down.as<float>() + local * h * inter, act.data(), h, inter, y.data());
        const float w = topk_weights.as<float>()[r * k + j];
        for (int64_t i = 0; i < h; ++i) o[i] += w * y[i];
      }
    }
  }

  void add_sigmoid_gated(const Tensor& x, const Tensor& gate, const Tensor& inout) override {
    require_f32(x, "add_sigmoid_gated");
    require_f32(gate, "add_sigmoid_gated");
    const int64_t t = gate.numel();
    if (t == 0) return;
    const int64_t h = x.numel() / t;
    for (int64_t r = 0; r < t; ++r) {
      const float g = 1.0f / (1.0f + std::exp(-gate.as<float>()[r]));
      for (int64_t i = 0; i < h; ++i) inout.as<float>()[r * h + i] += g * x.as<float>()[r * h + i];
    }
  }

 private:
  CpuBackendOptions options_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(CpuBackendOptions options) { return std::make_unique<CpuBackend>(options); }

}  // namespace troupe
