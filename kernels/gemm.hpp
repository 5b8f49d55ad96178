// Dense GEMMs through cuBLASLt (kernels/gemm.cpp).
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <compare>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>

namespace troupe::cuda {

// The cuBLASLt handle, workspace and per-shape plans of one device. Create it with that device
// current. Not thread-safe: one gpu_worker thread owns it, and every call must use the same stream
// (the workspace is reused call after call without other ordering).
class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // out[tokens, n] = x[tokens, k] · w[n, k]ᵀ (+ bias[n]), all row-major bf16, f32 accumulation.
  // Any sizes and any 2-byte-aligned pointers; aligned ones (16 bytes, k and n multiples of 8) get the
  // tensor-core kernels.
  void linear(const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* bias, __nv_bfloat16* out,
              int64_t tokens, int64_t n, int64_t k, cudaStream_t stream);

 private:
  // What the heuristic's choice depends on: sizes, and the alignment of each pointer (cuBLASLt assumes
  // 256 bytes unless told, and a view into a tensor is often less aligned).
  struct Shape {
    int64_t tokens, n, k;
    uint32_t align_x, align_w, align_out, align_bias;  // align_bias = 0: no bias
    auto operator<=>(const Shape&) const = default;
  };
  struct Plan;

  const Plan& plan_for(const Shape& shape, const void* bias);
  std::unique_ptr<Plan> build(const Shape& shape, const void* bias, bool fuse_bias) const;

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  std::map<Shape, std::unique_ptr<Plan>> plans_;
};

}  // namespace troupe::cuda
