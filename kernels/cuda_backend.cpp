// The CUDA Backend: maps engine/backend.hpp's ops onto the kernels of this folder and cuBLASLt. One
// backend is bound to one device and owns one stream; every op is enqueued on it in call order, and
// only download() and synchronize() wait for the device.
#include "kernels/cuda_backend.hpp"

#include "kernels/device_memory.hpp"
#include "kernels/random_fill.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/attention.cuh"
#include "kernels/activation.cuh"
#include "kernels/cuda_check.hpp"
#include "kernels/device_scratch.hpp"
#include "kernels/elementwise.cuh"
#include "kernels/gemm.hpp"
#include "kernels/gemv.cuh"
#ifdef TROUPE_KERNEL_CLOCK
#include "kernels/kernel_clock.hpp"
#endif
#include "kernels/moe_experts.cuh"
#include "kernels/moe_routing.cuh"
#include "kernels/pushed_all_reduce.hpp"
#include "kernels/qk_norm.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/rope_kv.cuh"
#include "kernels/switches.hpp"

namespace troupe {

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

namespace {

using bf16 = __nv_bfloat16;

void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string("cuda backend, ") + op + ": " + what);
}

void require_cuda(const Tensor& t, const char* op) {
  require(t.device() == Device::cuda, op, "expected a cuda tensor, got " + t.describe());
}

void require_bf16(const Tensor& t, const char* op) {
  require(t.device() == Device::cuda && t.dtype() == DType::bf16, op,
          "expected a bf16 cuda tensor, got " + t.describe());
}

bool is_floating(DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; }

const bf16* bf16_in(const Tensor& t) { return static_cast<const bf16*>(t.data()); }
bf16* bf16_out(const Tensor& t) { return static_cast<bf16*>(t.data()); }

// Converts n floating elements of src_type into dst (of dst_type) on the host, through f32 in slices
// so that a large weight needs no f32 copy of itself.
void convert_on_host(const void* src, DType src_type, void* dst, DType dst_type, size_t n) {
  constexpr size_t slice = size_t{1} << 20;
  std::vector<float> f32(std::min(n, slice));
  for (size_t begin = 0; begin < n; begin += slice) {
    const size_t count = std::min(slice, n - begin);
    const void* s = static_cast<const std::byte*>(src) + begin * dtype_size(src_type);
    if (dst_type == DType::f32) {
      convert_to_f32(s, src_type, static_cast<float*>(dst) + begin, count);
      continue;
    }
    convert_to_f32(s, src_type, f32.data(), count);
    uint16_t* d = static_cast<uint16_t*>(dst) + begin;
    if (dst_type == DType::bf16) {
      for (size_t i = 0; i < count; ++i) d[i] = f32_to_bf16(f32[i]);
    } else {
      for (size_t i = 0; i < count; ++i) d[i] = f32_to_f16(f32[i]);
    }
  }
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device), blocks_(device) {
    bind();
    // Non-blocking: no implicit ordering with the legacy default stream, which other libraries in the
    // process may use.
    TROUPE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    try {
      gemm_ = std::make_unique<cuda::Gemm>();
    } catch (...) {
      cudaStreamDestroy(stream_);
      throw;
    }
  }

  ~CudaBackend() override {
    // Nothing here may throw; errors at teardown (a dead context, process exit) have nowhere to go.
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
#ifdef TROUPE_KERNEL_CLOCK
    cuda::dump_kernel_clock();
#endif
    gemm_.reset();
    cudaStreamDestroy(stream_);
    cudaGetLastError();
  }

  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  int device_index() const { return device_; }
  cudaStream_t stream() const { return stream_; }

  Device device() const override { return Device::cuda; }
  DType compute_dtype() const override { return DType::bf16; }

  Tensor allocate(std::vector<int64_t> shape, DType dtype) override {
    int64_t n = 1;
    for (int64_t s : shape) {
      require(s >= 0, "allocate", "negative dimension");
      n *= s;
    }
    bind();
    // Never zero bytes, so that an empty tensor still has a real pointer. Blocks come from the cache
    // (see device_memory.hpp): a freed block is reused by the next allocation on this stream.
    std::shared_ptr<void> storage = blocks_.get(std::max<size_t>(static_cast<size_t>(n) * dtype_size(dtype), 16));
    void* p = storage.get();
    // A graph replays on the memory it was captured with: that memory stays the graph's.
    if (capturing_) captured_.push_back(storage);
    return Tensor(p, dtype, std::move(shape), Device::cuda, std::move(storage));
  }

  // Stream-ordered: when it returns the host data may be freed. Small copies (step metadata) go
  // through pinned staging without waiting; large ones (weights) wait for their copy.
  void upload(const HostView& src, const Tensor& dst) override {
    require_cuda(dst, "upload");
    require(src.numel() == dst.numel(), "upload",
            "element count differs: " + std::to_string(src.numel()) + " into " + dst.describe());
    if (dst.numel() == 0) return;
    bind();
    const void* host = src.data;
    std::vector<std::byte> staging;
    if (src.dtype != dst.dtype()) {
      require(is_floating(src.dtype) && is_floating(dst.dtype()), "upload",
              std::string("cannot convert ") + std::string(dtype_name(src.dtype)) + " to " +
                  std::string(dtype_name(dst.dtype())));
      staging.resize(dst.nbytes());
      convert_on_host(src.data, src.dtype, staging.data(), dst.dtype(), static_cast<size_t>(dst.numel()));
      host = staging.data();
    }
    if (dst.nbytes() <= staging_.capacity() / 8) {
      staging_.copy_to_device(dst.data(), host, dst.nbytes(), stream_);
      return;
    }
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(dst.data(), host, dst.nbytes(), cudaMemcpyHostToDevice, stream_));
    TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  // 4-byte integers (a step's inputs) that fit the ring's small-copy share together: staged in the
  // pinned ring and copied by one kernel that reads them there, instead of a copy each. llama-3.1-8b's
  // batch-1 step on 4 × H200, against seven copies: tp1 4.331 ms either way, tp2 2.611 -> 2.607, tp4
  // 1.708 -> 1.703 (with no copies at all, a measurement only, the steps were 12–28 µs shorter: the
  // kernel's reads of host memory cost most of what the copies did). TROUPE_UPLOAD_KERNEL=0 copies
  // one by one, to measure.
  void upload_all(std::span<const Upload> uploads) override {
    static const bool on = cuda::switched_on("TROUPE_UPLOAD_KERNEL");
    size_t bytes = 0;
    bool words = on && uploads.size() <= static_cast<size_t>(cuda::kMaxWordCopies);
    for (const Upload& u : uploads) {
      words = words && u.src.dtype == u.dst.dtype() && dtype_size(u.dst.dtype()) == 4 &&
              u.dst.device() == Device::cuda && u.src.numel() == u.dst.numel();
      bytes += u.src.nbytes();
    }
    if (!words || bytes > staging_.capacity() / 8) {
      Backend::upload_all(uploads);
      return;
    }
    bind();
    cuda::WordCopies copies;
    for (const Upload& u : uploads) {
      if (u.dst.numel() == 0) continue;
      copies.src[copies.count] = static_cast<const uint32_t*>(staging_.stage(u.src.data, u.src.nbytes(), stream_));
      copies.dst[copies.count] = static_cast<uint32_t*>(u.dst.data());
      copies.words[copies.count++] = u.dst.numel();
    }
    cuda::copy_words(copies, stream_);
  }

  void download(const Tensor& src, void* dst) override {
    require_cuda(src, "download");
    if (src.numel() == 0) return;
    bind();
    if (src.dtype() == DType::bf16 || src.dtype() == DType::f16) {
      std::vector<uint16_t> staging(static_cast<size_t>(src.numel()));
      TROUPE_CUDA_CHECK(cudaMemcpyAsync(staging.data(), src.data(), src.nbytes(), cudaMemcpyDeviceToHost, stream_));
      TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
      convert_to_f32(staging.data(), src.dtype(), static_cast<float*>(dst), staging.size());
    } else {
      TROUPE_CUDA_CHECK(cudaMemcpyAsync(dst, src.data(), src.nbytes(), cudaMemcpyDeviceToHost, stream_));
      TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    }
  }

  void synchronize() override {
    bind();
    TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  std::pair<int64_t, int64_t> memory() const override {
    bind();
    size_t free = 0, total = 0;
    TROUPE_CUDA_CHECK(cudaMemGetInfo(&free, &total));
    // Blocks idle in our cache are ours to reuse: count them as free.
    return {static_cast<int64_t>(free + blocks_.idle_bytes()), static_cast<int64_t>(total)};
  }

  bool begin_capture() override {
    bind();
    // Relaxed: a first use of a size class may still cudaMalloc inside the capture.
    TROUPE_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
    capturing_ = true;
    captured_.clear();
    return true;
  }

  std::shared_ptr<void> end_capture() override {
    bind();
    capturing_ = false;
    cudaGraph_t graph = nullptr;
    TROUPE_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    TROUPE_CUDA_CHECK(err);
    return std::shared_ptr<void>(exec, [blocks = std::move(captured_)](void* e) {
      cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(e));
      cudaGetLastError();
    });
  }

  void replay(const std::shared_ptr<void>& graph) override {
    bind();
    TROUPE_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph.get()), stream_));
  }

  void fill_random(const Tensor& t, uint64_t seed, float mean, float std, RandomWindow window) override {
    require_cuda(t, "fill_random");
    bind();
    cuda::launch_random_fill(t.data(), t.dtype(), t.numel(), seed, mean, std, window, stream_);
  }

  void embedding(const Tensor& table, const Tensor& ids, const Tensor& out) override {
    require_cuda(table, "embedding");
    require(ids.device() == Device::cuda && ids.dtype() == DType::i32, "embedding",
            "expected i32 cuda ids, got " + ids.describe());
    require(out.device() == Device::cuda && out.dtype() == table.dtype(), "embedding",
            "output " + out.describe() + " for table " + table.describe());
    require(table.rank() >= 1, "embedding", "table " + table.describe());
    const int64_t width = table.row_numel();
    require(out.numel() == ids.numel() * width, "embedding", "output shape " + out.describe());
    bind();
    cuda::gather_rows(table.data(), table.size(0), ids.as<int32_t>(), ids.numel(),
                      static_cast<size_t>(width) * dtype_size(table.dtype()), out.data(), stream_);
  }

  void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) override {
    require_bf16(x, "rms_norm");
    require_bf16(weight, "rms_norm");
    require_bf16(out, "rms_norm");
    const int64_t width = weight.numel();
    require(width > 0 && x.numel() % width == 0 && out.numel() == x.numel(), "rms_norm",
            "shapes " + x.describe() + ", " + weight.describe() + ", " + out.describe());
    bind();
    cuda::rms_norm(bf16_in(x), bf16_in(weight), bf16_out(out), x.numel() / width, width, eps, stream_);
  }

  void add_rms_norm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                    const Tensor& out) override {
    require_bf16(residual, "add_rms_norm");
    require_bf16(x, "add_rms_norm");
    require_bf16(weight, "add_rms_norm");
    require_bf16(out, "add_rms_norm");
    const int64_t width = weight.numel();
    require(width > 0 && x.numel() % width == 0 && residual.numel() == x.numel() && out.numel() == x.numel(),
            "add_rms_norm",
            "shapes " + residual.describe() + ", " + x.describe() + ", " + weight.describe() + ", " + out.describe());
    bind();
    cuda::add_rms_norm(bf16_out(residual), bf16_in(x), bf16_in(weight), bf16_out(out), x.numel() / width, width, eps,
                       stream_);
  }

  void linear(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& out) override {
    project(x, w, bias, out, "linear", false);
  }

  // The GEMV copies the normed input into each block's shared memory (GemvInput::staged): read plain by
  // every warp, tp4's qkv (192 blocks) crowded the L2 slices that hold it and llama-3.1-8b's tp4 step
  // took 1.797 ms against 1.723 (4 × H200). TROUPE_GEMV_STAGED=0 reads it plain, to measure.
  void normed_linear(const Tensor& normed, const Tensor& w, const Tensor* bias, const Tensor& out) override {
    static const bool staged = cuda::switched_on("TROUPE_GEMV_STAGED");
    project(normed, w, bias, out, "normed_linear", false, staged ? cuda::GemvInput::staged : cuda::GemvInput::plain);
  }

  void silu_mul(const Tensor& gate_up, const Tensor& out) override {
    require_bf16(gate_up, "silu_mul");
    require_bf16(out, "silu_mul");
    require(gate_up.rank() >= 1 && gate_up.size(-1) % 2 == 0, "silu_mul",
            "gate_up " + gate_up.describe() + " needs an even last dimension");
    const int64_t width = gate_up.size(-1), inter = width / 2;
    const int64_t rows = width == 0 ? 0 : gate_up.numel() / width;
    require(out.numel() == rows * inter, "silu_mul", "shapes " + gate_up.describe() + ", " + out.describe());
    bind();
    cuda::silu_mul(bf16_in(gate_up), bf16_out(out), rows, inter, stream_);
  }

  void silu_mul_linear(const Tensor& gate_up, const Tensor& w, const Tensor& act, const Tensor& out) override {
    if (!gated_gemv(gate_up, w, out, false, "silu_mul_linear")) Backend::silu_mul_linear(gate_up, w, act, out);
  }

  void rms_norm_linear(const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& w, const Tensor* bias,
                       const Tensor& normed, const Tensor& out) override {
    const char* op = "rms_norm_linear";
    const int64_t k = w.rank() == 2 ? w.size(1) : 0;
    const int64_t tokens = k > 0 ? x.numel() / k : 0;
    if (tokens >= 1 && use_gemv(tokens, w)) {
      check_projection(x, w, bias, out, op);
      require_bf16(norm_weight, op);
      require(norm_weight.numel() == k, op, "norm weight " + norm_weight.describe() + " for w " + w.describe());
      bind();
      cuda::GemvCall c = gemv_call(x, w, bias, out, tokens);
      c.input = cuda::GemvInput::rms_norm, c.norm_weight = bf16_in(norm_weight), c.eps = eps;
      if (cuda::small_batch_gemv(c, stream_)) return;
    }
    Backend::rms_norm_linear(x, norm_weight, eps, w, bias, normed, out);
  }

  bool fuses_residual_add(int64_t tokens, const Tensor& w) const override { return use_gemv(tokens, w); }

  // A pushed all-reduce's sending end is the GEMV; where it declines a call, the projection is
  // cuBLASLt's and kernels/pushed_all_reduce.hpp's kernel sends, so that every rank sends.
  bool pushes_output(int64_t tokens, const Tensor& w) const override {
    return use_gemv(tokens, w) && w.size(0) % 8 == 0;
  }

  void linear_push(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& out,
                   const PushedAllReduce& ar) override {
    const int64_t tokens = check_projection(x, w, bias, out, "linear_push");
    bind();
    cuda::GemvCall c = gemv_call(x, w, bias, out, tokens);
    c.push = &ar;
    if (cuda::small_batch_gemv(c, stream_)) return;
    gemm_->linear(c.x, c.w, c.bias, c.out, tokens, c.n, c.k, stream_);
    cuda::pushed_send(c.out, static_cast<size_t>(out.numel()), ar, stream_);
  }

  void silu_mul_linear_push(const Tensor& gate_up, const Tensor& w, const Tensor& out,
                            const PushedAllReduce& ar) override {
    if (gated_gemv(gate_up, w, out, false, "silu_mul_linear_push", &ar)) return;
    Tensor act = allocate({gate_up.numel() / gate_up.size(-1), w.size(1)}, DType::bf16);
    Backend::silu_mul_linear(gate_up, w, act, out);
    cuda::pushed_send(bf16_in(out), static_cast<size_t>(out.numel()), ar, stream_);
  }

  void gather_add(const Tensor& delta, const Tensor& residual, const PushedAllReduce& ar) override {
    require_bf16(delta, "gather_add");
    require_bf16(residual, "gather_add");
    require(delta.numel() == residual.numel(), "gather_add", "shapes " + delta.describe() + ", " + residual.describe());
    bind();
    cuda::pushed_gather_add(bf16_in(delta), bf16_out(residual), static_cast<size_t>(delta.numel()), ar, stream_);
  }

  // One kernel for the gather and the norm after it, at the GEMV's token counts: the norm's
  // projection then copies the normed input into its blocks (normed_linear) instead of each block
  // normalising the residual after its wait. llama-3.1-8b's batch-1 step on 4 × H200, with the rest
  // of that path (the residual loaded first, the gather apart from streaming CTAs): tp2 2.644 -> 2.608
  // ms, tp4 1.708 -> 1.700; normalising in the gather before qkv alone, or before gate_up alone, gained
  // less than both (docs/benchmarks.md). TROUPE_GATHER_NORM=0 leaves the norm to the projection, to
  // measure.
  bool gather_normalises(int64_t tokens) const override {
    static const bool on = cuda::switched_on("TROUPE_GATHER_NORM");
    return on && tokens >= 1 && tokens <= cuda::kGemvMaxTokens;
  }

  void gather_add_rms_norm(const Tensor& delta, const Tensor& residual, const PushedAllReduce& ar,
                           const Tensor& norm_weight, float eps, const Tensor& normed) override {
    const char* op = "gather_add_rms_norm";
    require_bf16(delta, op);
    require_bf16(residual, op);
    require_bf16(norm_weight, op);
    require_bf16(normed, op);
    require(delta.numel() == residual.numel() && normed.numel() == residual.numel() && residual.rank() >= 1 &&
                residual.size(-1) == norm_weight.numel(),
            op, "shapes " + delta.describe() + ", " + residual.describe() + ", " + norm_weight.describe() + ", " +
                    normed.describe());
    if (static_cast<size_t>(residual.numel() / norm_weight.numel()) > cuda::kGatherNormMaxRows)
      return Backend::gather_add_rms_norm(delta, residual, ar, norm_weight, eps, normed);
    bind();
    cuda::pushed_gather_add_rms_norm(bf16_in(delta), bf16_out(residual), static_cast<size_t>(delta.numel()), ar,
                                     bf16_in(norm_weight), static_cast<size_t>(norm_weight.numel()), eps,
                                     bf16_out(normed), stream_);
  }

  // The projection adds into the residual in the GEMV (see fuses_residual_add); otherwise the ops
  // one after another.
  void linear_add(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& delta,
                  const Tensor& residual) override {
    if (!project(x, w, bias, residual, "linear_add", true)) Backend::linear_add(x, w, bias, delta, residual);
  }

  void silu_mul_linear_add(const Tensor& gate_up, const Tensor& w, const Tensor& act, const Tensor& delta,
                           const Tensor& residual) override {
    if (!gated_gemv(gate_up, w, residual, true, "silu_mul_linear_add"))
      Backend::silu_mul_linear_add(gate_up, w, act, delta, residual);
  }

  void add(const Tensor& x, const Tensor& inout) override {
    require_bf16(x, "add");
    require_bf16(inout, "add");
    require(x.numel() == inout.numel(), "add", "shapes " + x.describe() + ", " + inout.describe());
    bind();
    cuda::add(bf16_in(x), bf16_out(inout), x.numel(), stream_);
  }

  void qk_norm(const Tensor& qkv, const QkvLayout& layout, const Tensor& q_weight, const Tensor& k_weight,
               float eps) override {
    check_qk_norm(qkv, layout, q_weight, k_weight, "qk_norm");
    bind();
    cuda::qk_norm(bf16_out(qkv), qkv.numel() / layout.width(), layout.num_heads, layout.num_kv_heads,
                  layout.head_dim, bf16_in(q_weight), bf16_in(k_weight), eps, stream_);
  }

  void rope_store_kv(const Tensor& qkv, const QkvLayout& layout, const AttentionMetadata& meta, const RopeTable& rope,
                     const KvLayer& cache) override {
    const cuda::RopeStoreArgs a = rope_args(qkv, layout, meta, rope, cache, "rope_store_kv");
    bind();
    cuda::rope_store_kv(a, stream_);
  }

  void qk_norm_rope_store_kv(const Tensor& qkv, const QkvLayout& layout, const Tensor& q_weight,
                             const Tensor& k_weight, float eps, const AttentionMetadata& meta, const RopeTable& rope,
                             const KvLayer& cache) override {
    const char* op = "qk_norm_rope_store_kv";
    check_qk_norm(qkv, layout, q_weight, k_weight, op);
    cuda::RopeStoreArgs a = rope_args(qkv, layout, meta, rope, cache, op);
    a.q_norm = bf16_in(q_weight);
    a.k_norm = bf16_in(k_weight);
    a.norm_eps = eps;
    bind();
    cuda::rope_store_kv(a, stream_);
  }

  void attention(const Tensor& qkv, const QkvLayout& layout, const KvLayer& cache, const AttentionMetadata& meta,
                 float scale, const Tensor& out) override {
    const cuda::AttentionArgs a = attention_args(qkv, layout, cache, meta, scale, out, "attention");
    if (meta.num_seqs == 0 || meta.num_tokens == 0) return;
    cuda::attention(a, stream_);
  }

  // One kernel at decode where kernels/attention.cuh's rope_store_kv_attention can (q and k then
  // stay unrotated in qkv, which the model does not read again); otherwise the two ops.
  void rope_store_kv_attention(const Tensor& qkv, const QkvLayout& layout, const AttentionMetadata& meta,
                               const RopeTable& rope, const KvLayer& cache, float scale, const Tensor& out,
                               const Tensor* q_norm, const Tensor* k_norm, float eps) override {
    const char* op = "rope_store_kv_attention";
    require((q_norm == nullptr) == (k_norm == nullptr), op, "q_norm and k_norm go together");
    if (q_norm) check_qk_norm(qkv, layout, *q_norm, *k_norm, op);
    cuda::RopeStoreArgs r = rope_args(qkv, layout, meta, rope, cache, op);
    if (q_norm) {
      r.q_norm = bf16_in(*q_norm);
      r.k_norm = bf16_in(*k_norm);
      r.norm_eps = eps;
    }
    const cuda::AttentionArgs a = attention_args(qkv, layout, cache, meta, scale, out, op);
    bind();
    cuda::rope_store_kv_attention(r, a, stream_);
  }

  void moe_route(const Tensor& router_logits, int top_k, bool renormalize, const Tensor& topk_weights,
                 const Tensor& topk_ids) override {
    const char* op = "moe_route";
    require(router_logits.device() == Device::cuda &&
                (router_logits.dtype() == DType::bf16 || router_logits.dtype() == DType::f32),
            op, "router logits must be bf16 or f32 on cuda, got " + router_logits.describe());
    require(topk_weights.device() == Device::cuda && topk_weights.dtype() == DType::f32, op,
            "weights must be f32 cuda, got " + topk_weights.describe());
    require(topk_ids.device() == Device::cuda && topk_ids.dtype() == DType::i32, op,
            "ids must be i32 cuda, got " + topk_ids.describe());
    require(router_logits.rank() >= 1 && router_logits.size(-1) > 0, op, "logits " + router_logits.describe());
    const int64_t experts = router_logits.size(-1), tokens = router_logits.numel() / experts;
    require(top_k >= 1 && top_k <= experts && topk_ids.numel() == tokens * top_k &&
                topk_weights.numel() == tokens * top_k,
            op, "top_k " + std::to_string(top_k) + " with logits " + router_logits.describe() + ", weights " +
                    topk_weights.describe() + ", ids " + topk_ids.describe());
    bind();
    if (router_logits.dtype() == DType::bf16) {
      cuda::moe_route(bf16_in(router_logits), tokens, static_cast<int>(experts), top_k, renormalize,
                      topk_weights.as<float>(), topk_ids.as<int32_t>(), stream_);
    } else {
      cuda::moe_route(router_logits.as<float>(), tokens, static_cast<int>(experts), top_k, renormalize,
                      topk_weights.as<float>(), topk_ids.as<int32_t>(), stream_);
    }
  }

  // No host synchronisation (see kernels/moe_experts.cuh); the scratch is sized from the shapes alone
  // and kept, so only a new largest token count allocates.
  void moe_experts(const Tensor& x, const Tensor& topk_weights, const Tensor& topk_ids, const Tensor& gate_up,
                   const Tensor& down, int expert_begin, const Tensor& out) override {
    const char* op = "moe_experts";
    require_bf16(x, op);
    require_bf16(gate_up, op);
    require_bf16(down, op);
    require_bf16(out, op);
    require(topk_weights.device() == Device::cuda && topk_weights.dtype() == DType::f32, op,
            "weights must be f32 cuda, got " + topk_weights.describe());
    require(topk_ids.device() == Device::cuda && topk_ids.dtype() == DType::i32, op,
            "ids must be i32 cuda, got " + topk_ids.describe());
    require(gate_up.rank() == 3 && down.rank() == 3 && gate_up.size(1) % 2 == 0, op,
            "gate_up " + gate_up.describe() + " and down " + down.describe() + " must be [E, 2I, H] and [E, H, I]");
    const int64_t experts = gate_up.size(0), hidden = gate_up.size(2), inter = gate_up.size(1) / 2;
    require(experts > 0 && hidden > 0 && inter > 0 && down.size(0) == experts && down.size(1) == hidden &&
                down.size(2) == inter,
            op, "gate_up " + gate_up.describe() + " and down " + down.describe() + " disagree");
    const int64_t tokens = x.numel() / hidden;
    require(x.numel() == tokens * hidden && out.numel() == x.numel(), op,
            "x " + x.describe() + ", out " + out.describe() + " for hidden size " + std::to_string(hidden));
    if (tokens == 0) return;
    const int64_t top_k = topk_ids.numel() / tokens;
    require(top_k >= 1 && topk_ids.numel() == tokens * top_k && topk_weights.numel() == tokens * top_k, op,
            "ids " + topk_ids.describe() + ", weights " + topk_weights.describe() + " for " + std::to_string(tokens) +
                " tokens");
    const cuda::MoeExpertsShape shape = moe_shape(tokens, static_cast<int>(top_k), gate_up, expert_begin);
    bind();
    const std::size_t bytes = cuda::moe_experts_scratch_bytes(shape);
    cuda::moe_experts(bf16_in(x), topk_weights.as<float>(), topk_ids.as<int32_t>(), bf16_in(gate_up), bf16_in(down),
                      bf16_out(out), shape, scratch(moe_scratch_, bytes), bytes, stream_);
  }

  void reserve_moe_experts(int64_t tokens, int top_k, const Tensor& gate_up, const Tensor& down) override {
    if (tokens <= 0 || gate_up.rank() != 3 || down.rank() != 3) return;
    bind();
    scratch(moe_scratch_, cuda::moe_experts_scratch_bytes(moe_shape(tokens, top_k, gate_up, 0)));
  }

  void reserve_scatter_add_rows(int64_t count, int64_t rows) override {
    if (count <= 0 || rows <= 0) return;
    bind();
    scratch(scatter_scratch_, cuda::scatter_add_rows_scratch_bytes(count, rows));
  }

  uint64_t workspace_generation() const override { return workspace_generation_; }

  void add_sigmoid_gated(const Tensor& x, const Tensor& gate, const Tensor& inout) override {
    const char* op = "add_sigmoid_gated";
    require_bf16(x, op);
    require_bf16(gate, op);
    require_bf16(inout, op);
    const int64_t rows = gate.numel();
    if (rows == 0) return;
    require(x.numel() % rows == 0 && inout.numel() == x.numel(), op,
            "x " + x.describe() + ", gate " + gate.describe() + ", inout " + inout.describe());
    bind();
    cuda::add_sigmoid_gated(bf16_in(x), bf16_in(gate), bf16_out(inout), rows, x.numel() / rows, stream_);
  }

  // Deterministic, in ascending source order per output row (kernels/elementwise.cuh).
  void scatter_add_rows(const Tensor& src, const Tensor& index, const Tensor& out) override {
    const char* op = "scatter_add_rows";
    require_bf16(src, op);
    require_bf16(out, op);
    require(index.device() == Device::cuda && index.dtype() == DType::i32, op,
            "index must be i32 cuda, got " + index.describe());
    require(out.rank() >= 1, op, "out " + out.describe());
    const int64_t rows = out.size(0), width = out.row_numel();
    require(src.numel() == index.numel() * width, op,
            "src " + src.describe() + ", index " + index.describe() + ", out " + out.describe());
    if (index.numel() == 0 || rows == 0 || width == 0) return;
    bind();
    const std::size_t bytes = cuda::scatter_add_rows_scratch_bytes(index.numel(), rows);
    cuda::scatter_add_rows(bf16_in(src), index.as<int32_t>(), index.numel(), bf16_out(out), rows, width,
                           scratch(scatter_scratch_, bytes), bytes, stream_);
  }

  void unstack_columns(const Tensor& stacked, const Tensor& out) override {
    const char* op = "unstack_columns";
    require_cuda(stacked, op);
    require_cuda(out, op);
    require(stacked.dtype() == out.dtype() && stacked.rank() == 3 && out.rank() == 2 &&
                stacked.size(1) == out.size(0) && out.size(1) <= stacked.size(0) * stacked.size(2),
            op, "shapes " + stacked.describe() + ", " + out.describe());
    bind();
    cuda::unstack_columns(stacked.data(), stacked.size(0), stacked.size(1), stacked.size(2), out.data(), out.size(1),
                          dtype_size(out.dtype()), stream_);
  }
  void zero(const Tensor& t) override {
    TROUPE_CUDA_CHECK(cudaSetDevice(device_));
    TROUPE_CUDA_CHECK(cudaMemsetAsync(t.data(), 0, t.nbytes(), stream_));
  }

 private:
  // The worker thread that owns this backend may also touch other devices (NCCL setup, tests), so
  // every entry point makes its device current first; cudaSetDevice is a cheap thread-local switch.
  void bind() const { TROUPE_CUDA_CHECK(cudaSetDevice(device_)); }

  // attention's arguments, checked; on a step with sequences, the decode path's workspace is allocated
  // at the first call.
  cuda::AttentionArgs attention_args(const Tensor& qkv, const QkvLayout& layout, const KvLayer& cache,
                                     const AttentionMetadata& meta, float scale, const Tensor& out, const char* op) {
    require_bf16(qkv, op);
    require_bf16(out, op);
    require_bf16(cache.k, op);
    require_bf16(cache.v, op);
    require_metadata(meta.query_start, meta.num_seqs + 1, op, "query_start");
    require_metadata(meta.context_lens, meta.num_seqs, op, "context_lens");
    require(meta.block_tables.device() == Device::cuda && meta.block_tables.dtype() == DType::i32 &&
                meta.block_tables.rank() == 2 && meta.block_tables.size(0) == meta.num_seqs,
            op, "block_tables must be i32 cuda [num_seqs, blocks], got " + meta.block_tables.describe());
    require(qkv.numel() == static_cast<int64_t>(meta.num_tokens) * layout.width() &&
                out.numel() == static_cast<int64_t>(meta.num_tokens) * layout.q_size(),
            op, "qkv " + qkv.describe() + ", out " + out.describe() + " for " + std::to_string(meta.num_tokens) +
                    " tokens");
    require(cache.k.rank() == 4 && cache.k.size(1) == meta.block_size && cache.k.size(2) == layout.num_kv_heads &&
                cache.k.size(3) == layout.head_dim && cache.v.shape() == cache.k.shape(),
            op, "cache " + cache.k.describe() + " for block_size " + std::to_string(meta.block_size));
    cuda::AttentionArgs a;
    a.qkv = bf16_in(qkv);
    a.out = bf16_out(out);
    a.k_cache = bf16_in(cache.k);
    a.v_cache = bf16_in(cache.v);
    a.query_start = meta.query_start.as<int32_t>();
    a.context_lens = meta.context_lens.as<int32_t>();
    a.block_tables = meta.block_tables.as<int32_t>();
    a.num_seqs = meta.num_seqs;
    a.num_tokens = meta.num_tokens;
    a.max_query_len = meta.max_query_len;
    a.max_context_len = meta.max_context_len;
    a.max_blocks_per_seq = static_cast<int>(meta.block_tables.size(1));
    a.block_size = meta.block_size;
    a.num_heads = layout.num_heads;
    a.num_kv_heads = layout.num_kv_heads;
    a.head_dim = layout.head_dim;
    a.scale = scale;
    if (meta.num_seqs == 0 || meta.num_tokens == 0) return a;  // nothing to attend: no workspace yet
    bind();
    if (!attention_workspace_.defined()) {
      // Sized once for the most the decode path ever splits on this device, so that later steps (and a
      // captured CUDA graph) never allocate.
      int sms = 0;
      TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device_));
      attention_sm_count_ = sms;
      attention_workspace_ =
          allocate({static_cast<int64_t>(cuda::attention_workspace_floats(sms))}, DType::f32);
      zero(attention_workspace_);  // the split counters at its end start at zero
    }
    a.workspace = attention_workspace_.as<float>();
    a.workspace_floats = static_cast<size_t>(attention_workspace_.numel());
    a.sm_count = attention_sm_count_;
    return a;
  }

  void check_qk_norm(const Tensor& qkv, const QkvLayout& layout, const Tensor& q_weight, const Tensor& k_weight,
                     const char* op) const {
    require_bf16(qkv, op);
    require_bf16(q_weight, op);
    require_bf16(k_weight, op);
    const int64_t width = layout.width();
    require(width > 0 && qkv.numel() % width == 0, op,
            "qkv " + qkv.describe() + " is not made of rows of " + std::to_string(width));
    require(q_weight.numel() == layout.head_dim && k_weight.numel() == layout.head_dim, op,
            "weights " + q_weight.describe() + ", " + k_weight.describe() + " for head_dim " +
                std::to_string(layout.head_dim));
  }

  cuda::RopeStoreArgs rope_args(const Tensor& qkv, const QkvLayout& layout, const AttentionMetadata& meta,
                                const RopeTable& rope, const KvLayer& cache, const char* op) const {
    require_bf16(qkv, op);
    require_bf16(cache.k, op);
    require_bf16(cache.v, op);
    require_metadata(meta.positions, meta.num_tokens, op, "positions");
    require_metadata(meta.slot_mapping, meta.num_tokens, op, "slot_mapping");
    const int half = layout.head_dim / 2;
    require(layout.head_dim > 0 && layout.head_dim % 2 == 0, op, "head_dim must be even");
    for (const Tensor* t : {&rope.cos, &rope.sin})
      require(t->device() == Device::cuda && t->dtype() == DType::f32 && t->rank() == 2 && t->size(1) == half &&
                  t->shape() == rope.cos.shape(),
              op, "rope tables must be f32 cuda [positions, " + std::to_string(half) + "], got " + t->describe());
    require(qkv.numel() == static_cast<int64_t>(meta.num_tokens) * layout.width(), op,
            "qkv " + qkv.describe() + " for " + std::to_string(meta.num_tokens) + " tokens");
    const int64_t kv_size = layout.kv_size();
    require(kv_size > 0 && cache.k.numel() % kv_size == 0 && cache.v.shape() == cache.k.shape(), op,
            "cache " + cache.k.describe() + ", " + cache.v.describe() + " for " + std::to_string(kv_size) +
                " values per slot");
    // Positions lie below the context lengths; the kernel cannot throw on a position it cannot rotate.
    require(meta.max_context_len <= rope.cos.size(0), op,
            "contexts of " + std::to_string(meta.max_context_len) + " tokens exceed the rope table of " +
                std::to_string(rope.cos.size(0)) + " positions");
    cuda::RopeStoreArgs a;
    a.qkv = bf16_out(qkv);
    a.positions = meta.positions.as<int32_t>();
    a.slot_mapping = meta.slot_mapping.as<int32_t>();
    a.cos = rope.cos.as<float>();
    a.sin = rope.sin.as<float>();
    a.k_cache = bf16_out(cache.k);
    a.v_cache = bf16_out(cache.v);
    a.num_tokens = meta.num_tokens;
    a.num_slots = cache.k.numel() / kv_size;
    a.max_positions = static_cast<int>(rope.cos.size(0));
    a.num_heads = layout.num_heads;
    a.num_kv_heads = layout.num_kv_heads;
    a.head_dim = layout.head_dim;
    return a;
  }

  // Tokens, shapes and dtypes of out[T, N] = x[T, K] · w[N, K]ᵀ (+ bias) checked; returns T.
  int64_t check_projection(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& out, const char* op) {
    require_bf16(x, op);
    require_bf16(w, op);
    require_bf16(out, op);
    require(w.rank() == 2, op, "weight must be [N, K], got " + w.describe());
    const int64_t n = w.size(0), k = w.size(1);
    require(k > 0 && x.numel() % k == 0, op, "x " + x.describe() + " for w " + w.describe());
    const int64_t tokens = x.numel() / k;
    require(out.numel() == tokens * n, op, "x " + x.describe() + ", w " + w.describe() + ", out " + out.describe());
    if (bias) {
      require_bf16(*bias, op);
      require(bias->numel() == n, op, "bias " + bias->describe() + " for w " + w.describe());
    }
    return tokens;
  }

  // out = x · wᵀ (+ bias), or out += that (accumulate) where the GEMV takes the call; false, with
  // nothing launched, for an accumulate the GEMV declines.
  bool project(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& out, const char* op,
               bool accumulate, cuda::GemvInput input = cuda::GemvInput::plain) {
    const int64_t tokens = check_projection(x, w, bias, out, op);
    bind();
    cuda::GemvCall c = gemv_call(x, w, bias, out, tokens);
    c.add_to_out = accumulate;
    c.input = input;
    if (use_gemv(tokens, w) && cuda::small_batch_gemv(c, stream_)) return true;
    if (accumulate) return false;
    gemm_->linear(c.x, c.w, c.bias, c.out, tokens, c.n, c.k, stream_);
    return true;
  }

  // Whether a projection of `tokens` rows goes to kernels/gemv.cu (with what it fuses) rather than
  // cuBLASLt: at a few tokens, for weights up to 64 MiB and for vocabulary-wide ones. Beyond that,
  // cuBLASLt streams a weight as fast or faster, and a fused SwiGLU would be recomputed by each of
  // hundreds of blocks: llama-3.1-8b's batch-1 step took 6.51 ms with every projection in the GEMV,
  // 6.06 with cuBLASLt, on an H100. The limit was 24 MB until the GEMV took four rows a warp from
  // 4096 rows (gemv.cu): with it, 64 MiB brings llama-3.1-8b's qkv and o, and the MLP of its
  // tensor-parallel shards, into the GEMV (tp4's shard on an H200: 1.76 -> 1.54 ms a step). An LM
  // head (at least 32768 rows, 8 times as many as its row is
  // long) streams as well in the GEMV, with the final norm fused: one token on an H100, qwen3-0.6b's
  // 311 MB head 0.839 -> 0.829/0.834 ms a step, llama-3.1-8b's 1 GB head 6.003 -> 5.985
  // (docs/benchmarks.md). TROUPE_GEMV_MAX_MB sets the limit and TROUPE_GEMV_WIDE=0 keeps the heads on
  // cuBLASLt, to measure. At one token, a weight above 64 MiB goes to the shared-memory-streaming
  // GEMV (cuda::stream_gemv_takes): it streams as fast as cuBLASLt and fuses the norm or SwiGLU that
  // cuBLASLt leaves to a kernel of its own.
  bool use_gemv(int64_t tokens, const Tensor& w) const {
    if (tokens > gemv_max_tokens_ || w.rank() != 2) return false;
    const bool vocabulary = w.size(0) >= 32768 && w.size(0) >= 8 * w.size(1);
    const int64_t bytes = w.size(0) * w.size(1) * 2;
    return bytes <= gemv_max_weight_bytes_ || (wide_gemv_ && vocabulary) ||
           (bytes <= stream_gemv_max_bytes_ &&
            cuda::stream_gemv_takes(tokens, w.size(0), w.size(1), cuda::GemvInput::plain));
  }
  bool wide_gemv_ = cuda::switched_on("TROUPE_GEMV_WIDE");
  int64_t gemv_max_weight_bytes_ = cuda::switch_value("TROUPE_GEMV_MAX_MB", cuda::kGemvMaxWeightMiB) << 20;
  // The shared-memory-streaming GEMV takes bigger weights too (kernels/stream_gemv.cu), with their
  // norm or SwiGLU fused; TROUPE_STREAM_GEMV_MAX_MB keeps those above it on cuBLASLt, to measure.
  int64_t stream_gemv_max_bytes_ = cuda::switch_value("TROUPE_STREAM_GEMV_MAX_MB", int64_t{1} << 30) << 20;

  // kernels/gemv.cu's call for out = x · w[N, K]ᵀ (+ bias) over `tokens` rows; what it fuses is the
  // caller's to set.
  static cuda::GemvCall gemv_call(const Tensor& x, const Tensor& w, const Tensor* bias, const Tensor& out,
                                  int64_t tokens) {
    cuda::GemvCall c;
    c.x = bf16_in(x), c.w = bf16_in(w), c.bias = bias ? bf16_in(*bias) : nullptr, c.out = bf16_out(out);
    c.tokens = tokens, c.n = w.size(0), c.k = w.size(1);
    return c;
  }

  // silu_mul(gate_up) · wᵀ into out (or added to it) by the GEMV, where it takes the call.
  bool gated_gemv(const Tensor& gate_up, const Tensor& w, const Tensor& out, bool accumulate, const char* op,
                  const PushedAllReduce* push = nullptr) {
    const int64_t width = gate_up.rank() >= 1 ? gate_up.size(-1) : 0;
    const int64_t tokens = width > 0 ? gate_up.numel() / width : 0;
    if (tokens < 1 || !use_gemv(tokens, w)) return false;
    require_bf16(gate_up, op);
    require_bf16(w, op);
    require_bf16(out, op);
    require(w.rank() == 2 && 2 * w.size(1) == width && out.numel() == tokens * w.size(0), op,
            "gate_up " + gate_up.describe() + ", w " + w.describe() + ", out " + out.describe());
    bind();
    cuda::GemvCall c = gemv_call(gate_up, w, nullptr, out, tokens);
    c.input = cuda::GemvInput::silu_mul, c.add_to_out = accumulate;
    c.push = push;
    return cuda::small_batch_gemv(c, stream_);
  }

  int device_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::Gemm> gemm_;
  // Projections of at most this many tokens go through kernels/gemv.cu (see use_gemv), with the
  // RMSNorm before them, the SwiGLU activation and the residual add fused. One by default: at one
  // token the fused, overlapped GEMVs made qwen3-0.6b's batch-1 step 17% shorter on an H100
  // (docs/benchmarks.md, "Decode on an H100"); at 8 they made the batch-8 step twice as long (the
  // one-warp-per-row layout spills registers). TROUPE_SMALL_BATCH_GEMV=N (0 to 8) sets it, to measure.
  int64_t gemv_max_tokens_ = std::clamp<int64_t>(cuda::switch_value("TROUPE_SMALL_BATCH_GEMV", 1), 0, cuda::kGemvMaxTokens);
  cuda::BlockCache blocks_;
  cuda::StagingRing staging_;
  bool capturing_ = false;
  std::vector<std::shared_ptr<void>> captured_;  // blocks allocated during the capture under way
  // MoE and scatter scratch: grown on demand, reused afterwards (freed after the destructor's sync).
  // moe_experts' shape: `tokens` rows of top_k choices over the experts of gate_up [E, 2I, H].
  static cuda::MoeExpertsShape moe_shape(int64_t tokens, int top_k, const Tensor& gate_up, int expert_begin) {
    cuda::MoeExpertsShape shape;
    shape.tokens = tokens;
    shape.top_k = top_k;
    shape.experts = static_cast<int>(gate_up.size(0));
    shape.expert_begin = expert_begin;
    shape.hidden = gate_up.size(2);
    shape.inter = gate_up.size(1) / 2;
    return shape;
  }

  // A scratch buffer of `bytes` at least; a move bumps the workspace generation (graphs go stale).
  void* scratch(cuda::DeviceScratch& buffer, std::size_t bytes) {
    const std::size_t before = buffer.capacity();
    void* p = buffer.get(bytes);
    if (buffer.capacity() != before) ++workspace_generation_;
    return p;
  }

  cuda::DeviceScratch moe_scratch_;
  cuda::DeviceScratch scatter_scratch_;
  uint64_t workspace_generation_ = 0;
  // Attention: the decode path's split-context scratch, allocated at the first attention call.
  Tensor attention_workspace_;
  int attention_sm_count_ = 0;

  // An i32 cuda tensor of `n` elements (per-step attention metadata).
  static void require_metadata(const Tensor& t, int64_t n, const char* op, const char* name) {
    require(t.device() == Device::cuda && t.dtype() == DType::i32 && t.numel() == n, op,
            std::string(name) + " must be i32 cuda of " + std::to_string(n) + " elements, got " + t.describe());
  }
};

}  // namespace

CudaStream cuda_stream_of(const Backend& backend) {
  const auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  if (!cuda) throw std::invalid_argument("cuda_stream_of: not a CUDA backend");
  return CudaStream{cuda->device_index(), cuda->stream()};
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
  const int count = cuda_device_count();
  if (device < 0 || device >= count)
    throw std::invalid_argument("cuda device " + std::to_string(device) + " does not exist: " + std::to_string(count) +
                                " visible");
  return std::make_unique<CudaBackend>(device);
}

}  // namespace troupe
