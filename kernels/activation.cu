// SwiGLU's silu(gate) · up and the sigmoid-gated residual add. Both are memory-bound: each element is
// read once and written once, so the kernels are about access width (16-byte packs) and nothing else.
#include <algorithm>

#include "kernels/activation.cuh"
#include "kernels/common.cuh"

namespace troupe::cuda {
namespace {

constexpr int threads = 256;
constexpr int64_t max_blocks = 65535;

unsigned grid_for(int64_t items) {
  return static_cast<unsigned>(std::clamp<int64_t>(ceil_div(items, threads), 1, max_blocks));
}

// The CPU reference's formula (x / (1 + e^-x)), which also saturates cleanly: e^-x = inf gives -0.
__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// One pack = 8 outputs; the gate and up packs of an output pack lie `inter` apart in its row.
__global__ void silu_mul_x8_kernel(const bf16* __restrict__ gate_up, bf16* __restrict__ out, int64_t packs,
                                   int64_t packs_per_row) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / packs_per_row, col = i % packs_per_row;
    const bf16* g = gate_up + row * packs_per_row * 16 + col * 8;
    const Bf16x8 gate = load8(g), up = load8(g + packs_per_row * 8);
    Bf16x8 r;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 a = gate.get(j), b = up.get(j);
      r.set(j, silu(a.x) * b.x, silu(a.y) * b.y);
    }
    store8(out + i * 8, r);
  }
}

__global__ void silu_mul_x1_kernel(const bf16* __restrict__ gate_up, bf16* __restrict__ out, int64_t n,
                                   int64_t inter) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / inter, col = i % inter;
    const bf16* g = gate_up + row * 2 * inter + col;
    out[i] = __float2bfloat16_rn(silu(__bfloat162float(g[0])) * __bfloat162float(g[inter]));
  }
}

// x and inout may alias (a caller adding a row to itself), hence no __restrict__ on them.
__global__ void add_sigmoid_gated_x8_kernel(const bf16* x, const bf16* __restrict__ gate, bf16* inout, int64_t packs,
                                            int64_t packs_per_row) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float s = sigmoid(__bfloat162float(gate[i / packs_per_row]));
    const Bf16x8 a = load8(x + i * 8), b = load8(inout + i * 8);
    Bf16x8 r;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 fa = a.get(j), fb = b.get(j);
      r.set(j, fb.x + s * fa.x, fb.y + s * fa.y);
    }
    store8(inout + i * 8, r);
  }
}

__global__ void add_sigmoid_gated_x1_kernel(const bf16* x, const bf16* __restrict__ gate, bf16* inout, int64_t n,
                                            int64_t width) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float s = sigmoid(__bfloat162float(gate[i / width]));
    inout[i] = __float2bfloat16_rn(__bfloat162float(inout[i]) + s * __bfloat162float(x[i]));
  }
}

}  // namespace

void silu_mul(const bf16* gate_up, bf16* out, int64_t rows, int64_t inter, cudaStream_t stream) {
  const int64_t n = rows * inter;
  if (n == 0) return;
  if (inter % 8 == 0 && is_aligned(gate_up, 16) && is_aligned(out, 16)) {
    silu_mul_x8_kernel<<<grid_for(n / 8), threads, 0, stream>>>(gate_up, out, n / 8, inter / 8);
    TROUPE_CUDA_CHECK_LAUNCH(silu_mul_x8_kernel);
  } else {
    silu_mul_x1_kernel<<<grid_for(n), threads, 0, stream>>>(gate_up, out, n, inter);
    TROUPE_CUDA_CHECK_LAUNCH(silu_mul_x1_kernel);
  }
}

void add_sigmoid_gated(const bf16* x, const bf16* gate, bf16* inout, int64_t rows, int64_t width,
                       cudaStream_t stream) {
  const int64_t n = rows * width;
  if (n == 0) return;
  if (width % 8 == 0 && is_aligned(x, 16) && is_aligned(inout, 16)) {
    add_sigmoid_gated_x8_kernel<<<grid_for(n / 8), threads, 0, stream>>>(x, gate, inout, n / 8, width / 8);
    TROUPE_CUDA_CHECK_LAUNCH(add_sigmoid_gated_x8_kernel);
  } else {
    add_sigmoid_gated_x1_kernel<<<grid_for(n), threads, 0, stream>>>(x, gate, inout, n, width);
    TROUPE_CUDA_CHECK_LAUNCH(add_sigmoid_gated_x1_kernel);
  }
}

}  // namespace troupe::cuda
