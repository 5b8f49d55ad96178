// The CUDA Backend: maps engine/backend.hpp's ops onto the kernels of this folder and cuBLASLt. One
// backend is bound to one device and owns one stream; every op is enqueued on it in call order, and
// only download() and synchronize() wait for the device.
#include "kernels/cuda_backend.hpp"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda_check.hpp"
#include "kernels/elementwise.cuh"
#include "kernels/gemm.hpp"
#include "kernels/rmsnorm.cuh"

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

[[noreturn]] void not_implemented(const char* op) {
  throw std::logic_error(std::string("cuda backend: ") + op + " is not implemented yet");
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
  explicit CudaBackend(int device) : device_(device) {
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
    gemm_.reset();
    cudaStreamDestroy(stream_);
    cudaGetLastError();
  }

  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  Device device() const override { return Device::cuda; }
  DType compute_dtype() const override { return DType::bf16; }

  Tensor allocate(std::vector<int64_t> shape, DType dtype) override {
    int64_t n = 1;
    for (int64_t s : shape) {
      require(s >= 0, "allocate", "negative dimension");
      n *= s;
    }
    bind();
    // Never zero bytes, so that an empty tensor still has a real, freeable pointer.
    const size_t bytes = std::max<size_t>(static_cast<size_t>(n) * dtype_size(dtype), 16);
    void* p = nullptr;
    TROUPE_CUDA_CHECK(cudaMalloc(&p, bytes));
    // The storage may outlive this backend, so the deleter holds only the device. cudaFree waits for
    // work still using the memory.
    std::shared_ptr<void> storage(p, [device = device_](void* q) {
      int current = device;
      cudaGetDevice(&current);
      cudaSetDevice(device);
      cudaFree(q);
      cudaSetDevice(current);
      cudaGetLastError();  // a failure here (e.g. at process exit) must not surface at the next launch
    });
    return Tensor(p, dtype, std::move(shape), Device::cuda, std::move(storage));
  }

  // Synchronous: when it returns, the host data may be freed and the device holds the values. Fine for
  // weights; per-step metadata will want a pinned ring buffer instead.
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
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(dst.data(), host, dst.nbytes(), cudaMemcpyHostToDevice, stream_));
    TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
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
    require_bf16(x, "linear");
    require_bf16(w, "linear");
    require_bf16(out, "linear");
    require(w.rank() == 2, "linear", "weight must be [N, K], got " + w.describe());
    const int64_t n = w.size(0), k = w.size(1);
    require(k > 0 && x.numel() % k == 0, "linear", "x " + x.describe() + " for w " + w.describe());
    const int64_t tokens = x.numel() / k;
    require(out.numel() == tokens * n, "linear",
            "x " + x.describe() + ", w " + w.describe() + ", out " + out.describe());
    if (bias) {
      require_bf16(*bias, "linear");
      require(bias->numel() == n, "linear", "bias " + bias->describe() + " for w " + w.describe());
    }
    bind();
    gemm_->linear(bf16_in(x), bf16_in(w), bias ? bf16_in(*bias) : nullptr, bf16_out(out), tokens, n, k, stream_);
  }

  void silu_mul(const Tensor&, const Tensor&) override { not_implemented("silu_mul"); }

  void add(const Tensor& x, const Tensor& inout) override {
    require_bf16(x, "add");
    require_bf16(inout, "add");
    require(x.numel() == inout.numel(), "add", "shapes " + x.describe() + ", " + inout.describe());
    bind();
    cuda::add(bf16_in(x), bf16_out(inout), x.numel(), stream_);
  }

  void qk_norm(const Tensor&, const QkvLayout&, const Tensor&, const Tensor&, float) override {
    not_implemented("qk_norm");
  }
  void rope_store_kv(const Tensor&, const QkvLayout&, const AttentionMetadata&, const RopeTable&,
                     const KvLayer&) override {
    not_implemented("rope_store_kv");
  }
  void attention(const Tensor&, const QkvLayout&, const KvLayer&, const AttentionMetadata&, float,
                 const Tensor&) override {
    not_implemented("attention");
  }
  void moe_route(const Tensor&, int, bool, const Tensor&, const Tensor&) override { not_implemented("moe_route"); }
  void moe_experts(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, int,
                   const Tensor&) override {
    not_implemented("moe_experts");
  }
  void add_sigmoid_gated(const Tensor&, const Tensor&, const Tensor&) override { not_implemented("add_sigmoid_gated"); }
  void scatter_add_rows(const Tensor&, const Tensor&, const Tensor&) override { not_implemented("scatter_add_rows"); }
  void unstack_columns(const Tensor&, const Tensor&) override { not_implemented("unstack_columns"); }
  void zero(const Tensor& t) override {
    TROUPE_CUDA_CHECK(cudaSetDevice(device_));
    TROUPE_CUDA_CHECK(cudaMemsetAsync(t.data(), 0, t.nbytes(), stream_));
  }

 private:
  // The worker thread that owns this backend may also touch other devices (NCCL setup, tests), so
  // every entry point makes its device current first; cudaSetDevice is a cheap thread-local switch.
  void bind() const { TROUPE_CUDA_CHECK(cudaSetDevice(device_)); }

  int device_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::Gemm> gemm_;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int device) {
  const int count = cuda_device_count();
  if (device < 0 || device >= count)
    throw std::invalid_argument("cuda device " + std::to_string(device) + " does not exist: " + std::to_string(count) +
                                " visible");
  return std::make_unique<CudaBackend>(device);
}

}  // namespace troupe
