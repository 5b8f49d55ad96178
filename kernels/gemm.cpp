// cuBLASLt for the dense layers: out[T, N] = x[T, K] · W[N, K]ᵀ (+ bias[N]).
//
// Row-major vs column-major. troupe stores matrices row-major; cuBLAS(Lt) reads them column-major. A
// row-major [r, c] buffer is, unchanged, the column-major c × r matrix with leading dimension c, i.e.
// its transpose. So, with no copies:
//   W   row-major [N, K]  = column-major  Wᵀ  (K × N, ld K)   -> matrix A, transa = T gives W   (N × K)
//   x   row-major [T, K]  = column-major  xᵀ  (K × T, ld K)   -> matrix B, transb = N keeps xᵀ (K × T)
//   out row-major [T, N]  = column-major outᵀ (N × T, ld N)   -> matrix D = A' · B' = W · xᵀ = (x · Wᵀ)ᵀ
// cuBLAS's m = N, n = T, k = K. D has N rows, so the bias epilogue (a vector as long as D's rows,
// broadcast along its columns) adds bias[N] to every token, which is what a linear layer wants.
//
// Weights are the "TN" operand that cuBLAS's tensor-core kernels like best (K contiguous for both A and
// B), so this is also the fast layout, not only the convenient one.
#include "kernels/gemm.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/cuda_check.hpp"
#include "kernels/elementwise.cuh"

namespace troupe::cuda {
namespace {

// NVIDIA's recommendation for Hopper; split-K and stream-K algorithms need it, others use none.
constexpr std::size_t workspace_bytes = 32u << 20;

// Largest power of two (≤ 256, cuBLASLt's default assumption) that divides the address.
uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  if (a == 0) return 256;
  return static_cast<uint32_t>(std::min<std::uintptr_t>(256, a & (~a + 1)));
}

template <class T>
void set(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attribute, const T& value) {
  TROUPE_CUDA_CHECK(cublasLtMatmulDescSetAttribute(desc, attribute, &value, sizeof(value)));
}

template <class T>
void set(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attribute, const T& value) {
  TROUPE_CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attribute, &value, sizeof(value)));
}

std::string describe(int64_t tokens, int64_t n, int64_t k) {
  return "x[" + std::to_string(tokens) + ", " + std::to_string(k) + "] · w[" + std::to_string(n) + ", " +
         std::to_string(k) + "]ᵀ";
}

}  // namespace

struct Gemm::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t w_layout = nullptr;
  cublasLtMatrixLayout_t x_layout = nullptr;
  cublasLtMatrixLayout_t out_layout = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool bias_fused = false;

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    // Destroy functions only free host memory; their status carries nothing to act on here.
    if (out_layout) cublasLtMatrixLayoutDestroy(out_layout);
    if (x_layout) cublasLtMatrixLayoutDestroy(x_layout);
    if (w_layout) cublasLtMatrixLayoutDestroy(w_layout);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

Gemm::Gemm() {
  TROUPE_CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes));
  try {
    TROUPE_CUDA_CHECK(cublasLtCreate(&handle_));
  } catch (...) {
    cudaFree(workspace_);
    throw;
  }
}

Gemm::~Gemm() {
  plans_.clear();
  cudaFree(workspace_);
  cublasLtDestroy(handle_);
}

std::unique_ptr<Gemm::Plan> Gemm::build(const Shape& s, const void* bias, bool fuse_bias) const {
  auto plan = std::make_unique<Plan>();
  plan->bias_fused = fuse_bias;
  // f32 accumulation and f32 alpha/beta (CUDA_R_32F scale type), the only scale type bf16 inputs allow
  // with CUBLAS_COMPUTE_32F.
  TROUPE_CUDA_CHECK(cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  set(plan->op, CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T);
  set(plan->op, CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N);
  if (fuse_bias) {
    set(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
    set(plan->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, CUDA_R_16BF);
    // The heuristic reads the pointer's value to learn its alignment.
    set(plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  }
  // Layouts describe the stored (column-major) matrices, before transa/transb; see the top of the file.
  TROUPE_CUDA_CHECK(cublasLtMatrixLayoutCreate(&plan->w_layout, CUDA_R_16BF, s.k, s.n, s.k));
  TROUPE_CUDA_CHECK(cublasLtMatrixLayoutCreate(&plan->x_layout, CUDA_R_16BF, s.k, s.tokens, s.k));
  TROUPE_CUDA_CHECK(cublasLtMatrixLayoutCreate(&plan->out_layout, CUDA_R_16BF, s.n, s.tokens, s.n));

  cublasLtMatmulPreference_t pref = nullptr;
  TROUPE_CUDA_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
  try {
    set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<uint64_t>(workspace_bytes));
    set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, s.align_w);
    set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, s.align_x);
    set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, s.align_out);
    set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, s.align_out);
    status = cublasLtMatmulAlgoGetHeuristic(handle_, plan->op, plan->w_layout, plan->x_layout, plan->out_layout,
                                            plan->out_layout, pref, 1, &result, &found);
  } catch (...) {
    cublasLtMatmulPreferenceDestroy(pref);
    throw;
  }
  cublasLtMatmulPreferenceDestroy(pref);
  // NOT_SUPPORTED (or nothing found) is how the heuristic says "no algorithm for this": the caller may
  // retry unfused. Anything else is a real error.
  if (status != CUBLAS_STATUS_NOT_SUPPORTED) TROUPE_CUDA_CHECK(status);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED || found == 0 || result.state != CUBLAS_STATUS_SUCCESS) return nullptr;
  plan->algo = result.algo;
  return plan;
}

const Gemm::Plan& Gemm::plan_for(const Shape& shape, const void* bias) {
  if (auto it = plans_.find(shape); it != plans_.end()) return *it->second;
  std::unique_ptr<Plan> plan;
  // Kernels with the bias epilogue may load the bias 16 bytes at a time, and no preference tells the
  // heuristic otherwise (PyTorch saw misaligned-address faults), so a less aligned bias is added apart.
  if (bias && shape.align_bias >= 16) plan = build(shape, bias, true);
  if (!plan) plan = build(shape, nullptr, false);
  if (!plan)
    throw std::runtime_error("cuBLASLt has no bf16 algorithm for " + describe(shape.tokens, shape.n, shape.k) +
                             " with pointer alignments x " + std::to_string(shape.align_x) + ", w " +
                             std::to_string(shape.align_w) + ", out " + std::to_string(shape.align_out) + " bytes");
  return *plans_.emplace(shape, std::move(plan)).first->second;
}

void Gemm::linear(const __nv_bfloat16* x, const __nv_bfloat16* w, const __nv_bfloat16* bias, __nv_bfloat16* out,
                  int64_t tokens, int64_t n, int64_t k, cudaStream_t stream) {
  if (tokens == 0 || n == 0) return;
  if (k <= 0) throw std::invalid_argument("linear: inner dimension must be positive, got " + describe(tokens, n, k));
  const Shape shape{tokens, n, k, alignment_of(x), alignment_of(w), alignment_of(out), bias ? alignment_of(bias) : 0};
  const Plan& plan = plan_for(shape, bias);
  if (plan.bias_fused) {
    // The descriptor is read when the matmul is enqueued, so this call's bias can replace the last one's.
    const void* bias_pointer = bias;
    set(plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias_pointer);
  }
  const float alpha = 1.0f, beta = 0.0f;
  // beta = 0: C is not read; passing out as C (same layout as D) is the documented in-place form.
  TROUPE_CUDA_CHECK(cublasLtMatmul(handle_, plan.op, &alpha, w, plan.w_layout, x, plan.x_layout, &beta, out,
                                   plan.out_layout, out, plan.out_layout, &plan.algo, workspace_, workspace_bytes,
                                   stream));
  if (bias && !plan.bias_fused) add_bias(bias, out, tokens, n, stream);
}

}  // namespace troupe::cuda
