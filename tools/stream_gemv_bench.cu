// Experiment: a decode GEMV whose weight streams through shared memory by the bulk copy engine
// (cp.async.bulk completing on an mbarrier), each warp with its own ring of stages over its own
// contiguous rows, against kernels/gemv.cu and cuBLASLt on the decode shapes, same run:
//   nvcc -std=c++20 -O3 -gencode=arch=compute_90a,code=sm_90a -I. tools/stream_gemv_bench.cu kernels/gemv.cu \
//        kernels/gemm.cpp -lcublasLt -lcublas -o stream_gemv_bench
// Weights cold (copies that together exceed L2), 64 calls a CUDA graph, launched overlapped as the
// decode step launches them. The floor: bytes over a read-only kernel's bandwidth in this run.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <vector>

#include "kernels/common.cuh"
#include "kernels/gemm.hpp"
#include "kernels/gemv.cuh"
#include "tools/device_fill.cuh"

namespace {

using troupe::cuda::bf16;

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_u32(dst)),
               "l"(src), "r"(bytes), "r"(smem_u32(bar))
               : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_u32(bar)), "r"(parity)
        : "memory");
  } while (!done);
}

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

struct alignas(16) Vec8 {
  __nv_bfloat162 h[4];
};

__device__ __forceinline__ void accumulate(const Vec8& w, const Vec8& x, float& acc) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 wf = __bfloat1622float2(w.h[i]);
    const float2 xf = __bfloat1622float2(x.h[i]);
    acc = fmaf(wf.x, xf.x, acc);
    acc = fmaf(wf.y, xf.y, acc);
  }
}

struct StreamParams {
  const bf16* x;
  const bf16* w;
  bf16* out;
  int64_t n, k;
  int chunk;  // elements a stage holds: a divisor of k, or whole rows
};

// Shared memory: x [T][k], then each warp's S stages of `chunk` elements, then the mbarriers.
template <int T, int W, int S>
size_t stream_smem(int64_t k, int chunk) {
  return static_cast<size_t>(T * k) * 2 + static_cast<size_t>(W) * S * chunk * 2 + static_cast<size_t>(W) * S * 8;
}

// Warp g of the grid's W · gridDim.x takes rows [n g / G, n (g + 1) / G): one contiguous run of the
// weight, copied chunk by chunk into its S stages. Lane l sums vectors l, l + 32, … of each row, in
// that order, as kernels/gemv.cu's warps do (its butterfly too), so the outputs are its bits.
template <int T, int W, int S>
__global__ void __launch_bounds__(W * 32) stream_gemv(const StreamParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* const xs = reinterpret_cast<bf16*>(smem);
  bf16* const rings = xs + T * p.k;
  uint64_t* const bars = reinterpret_cast<uint64_t*>(rings + static_cast<int64_t>(W) * S * p.chunk);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t g = static_cast<int64_t>(blockIdx.x) * W + warp, G = static_cast<int64_t>(gridDim.x) * W;
  const int64_t r_begin = p.n * g / G, r_end = p.n * (g + 1) / G;
  const int64_t total = (r_end - r_begin) * p.k;  // elements of this warp's run
  const int64_t chunks = (total + p.chunk - 1) / p.chunk;
  bf16* const ring = rings + static_cast<int64_t>(warp) * S * p.chunk;
  uint64_t* const bar = bars + warp * S;
  const bf16* const run = p.w + r_begin * p.k;
  auto issue = [&](int64_t c) {
    const int s = static_cast<int>(c % S);
    const uint32_t bytes = static_cast<uint32_t>(min64(p.chunk, total - c * p.chunk) * 2);
    mbar_expect_tx(&bar[s], bytes);
    bulk_copy(ring + s * p.chunk, run + c * p.chunk, bytes, &bar[s]);
  };
  if (lane == 0) {
#pragma unroll
    for (int s = 0; s < S; ++s) mbar_init(&bar[s], 1);
    mbar_fence_init();
    for (int64_t c = 0; c < min64(S, chunks); ++c) issue(c);
  }
  troupe::cuda::let_next_kernel_start();
  troupe::cuda::wait_for_previous_kernel();
  for (int64_t i = threadIdx.x; i < T * p.k / 8; i += W * 32)
    reinterpret_cast<uint4*>(xs)[i] = reinterpret_cast<const uint4*>(p.x)[i];
  __syncthreads();

  const int64_t kv = p.k / 8;  // vectors a row
  float acc[T];
#pragma unroll
  for (int t = 0; t < T; ++t) acc[t] = 0.0f;
  for (int64_t c = 0; c < chunks; ++c) {
    const int s = static_cast<int>(c % S);
    mbar_wait(&bar[s], static_cast<uint32_t>((c / S) & 1));
    const Vec8* const buf = reinterpret_cast<const Vec8*>(ring + s * p.chunk);
    const int64_t e0 = c * p.chunk;  // in the run
    const int vecs = static_cast<int>(min64(p.chunk, total - e0) / 8);
    // Segments: the chunk's part of one row each (32 · j vectors, as k is a multiple of 256).
    for (int v0 = 0; v0 < vecs;) {
      const int64_t ev = e0 / 8 + v0;  // vector index in the run
      const int64_t row = ev / kv;
      const int col0 = static_cast<int>(ev - row * kv);  // vector column in the row
      const int seg = static_cast<int>(min64(vecs - v0, kv - col0));
#pragma unroll 4
      for (int j = lane; j < seg; j += 32) {
        const Vec8 wv = buf[v0 + j];
#pragma unroll
        for (int t = 0; t < T; ++t)
          accumulate(wv, reinterpret_cast<const Vec8*>(xs)[t * kv + col0 + j], acc[t]);
      }
      v0 += seg;
      if (col0 + seg == kv) {  // the row is done
#pragma unroll
        for (int t = 0; t < T; ++t) {
          const float sum = troupe::cuda::warp_sum(acc[t]);
          if (lane == t) p.out[t * p.n + r_begin + row] = __float2bfloat16(sum);
          acc[t] = 0.0f;
        }
      }
    }
    __syncwarp();
    if (lane == 0 && c + S < chunks) issue(c + S);
  }
}

// A stage's elements: k itself up to 4096, else its largest divisor of at most 4096 that is a
// multiple of 256; below 4096, whole rows up to 4096.
int chunk_of(int64_t k, int most) {
  if (k >= most) {
    for (int64_t parts = (k + most - 1) / most;; ++parts)
      if (k % parts == 0 && (k / parts) % 256 == 0) return static_cast<int>(k / parts);
  }
  return static_cast<int>(most / k * k);
}

template <int T, int W, int S, int CHUNK>
bool launch_stream(const StreamParams& p0, int ctas_per_sm, int sms, cudaStream_t stream) {
  if (p0.k % 256 != 0) return false;
  StreamParams p = p0;
  p.chunk = chunk_of(p.k, CHUNK);
  const size_t smem = stream_smem<T, W, S>(p.k, p.chunk);
  if (smem > 227 * 1024) return false;
  static bool set = false;
  if (!set) {
    TROUPE_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(&stream_gemv<T, W, S>),
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024));
    set = true;
  }
  const int64_t warps = static_cast<int64_t>(sms) * ctas_per_sm * W;
  const int64_t ctas = std::min<int64_t>(sms * ctas_per_sm, (p.n + W - 1) / W);
  (void)warps;
  troupe::cuda::launch_overlapped<stream_gemv<T, W, S>>(dim3(static_cast<unsigned>(ctas)), dim3(W * 32), smem, stream,
                                                        p);
  return true;
}

// Sums every 16-byte vector of `bytes` (the read floor: no writes, all loads independent).
__global__ void read_all(const uint4* p, size_t vecs, uint32_t* sink) {
  uint32_t x = 0;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  for (; i + 3 * stride < vecs; i += 4 * stride) {
    const uint4 a = __ldg(p + i), b = __ldg(p + i + stride), c = __ldg(p + i + 2 * stride), d = __ldg(p + i + 3 * stride);
    x ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
  }
  for (; i < vecs; i += stride) {
    const uint4 a = __ldg(p + i);
    x ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (x == 0x12345678u) *sink = x;
}

float graph_us(cudaStream_t stream, const std::function<void(int)>& launch) {
  constexpr int kPerGraph = 64;
  cudaGraph_t graph;
  TROUPE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < kPerGraph; ++i) launch(i);
  TROUPE_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec;
  TROUPE_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t a, b;
  TROUPE_CUDA_CHECK(cudaEventCreate(&a));
  TROUPE_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) TROUPE_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  std::vector<float> t;
  for (int r = 0; r < 15; ++r) {
    TROUPE_CUDA_CHECK(cudaEventRecord(a, stream));
    TROUPE_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    TROUPE_CUDA_CHECK(cudaEventRecord(b, stream));
    TROUPE_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    TROUPE_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1000.0f / kPerGraph);
  }
  std::sort(t.begin(), t.end());
  cudaEventDestroy(a), cudaEventDestroy(b);
  cudaGraphExecDestroy(exec), cudaGraphDestroy(graph);
  return t[t.size() / 2];
}

struct Shape {
  const char* name;
  int64_t n, k;
};

struct Variant {
  const char* name;
  std::function<bool(const StreamParams&, cudaStream_t)> launch;
};

}  // namespace

int main() {
  cudaDeviceProp prop{};
  TROUPE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  cudaStream_t stream;
  TROUPE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  const size_t read_bytes = size_t{1} << 31;
  uint4* big;
  uint32_t* sink;
  TROUPE_CUDA_CHECK(cudaMalloc(&big, read_bytes));
  TROUPE_CUDA_CHECK(cudaMalloc(&sink, 4));
  TROUPE_CUDA_CHECK(cudaMemset(big, 1, read_bytes));
  const float read_us = graph_us(stream, [&](int) { read_all<<<sms * 8, 256, 0, stream>>>(big, read_bytes / 16, sink); });
  const double read_gbps = read_bytes / (read_us * 1e-6) / 1e9;
  cudaFree(big);
  std::printf("%s, %d SMs, L2 %d MB: read-only kernel %.0f GB/s\n", prop.name, sms, prop.l2CacheSize >> 20, read_gbps);

  std::vector<Variant> variants = {
      {"w8s2c8k", [&](const StreamParams& p, cudaStream_t s) { return launch_stream<1, 8, 2, 4096>(p, 1, sms, s); }},
      {"w8s2c4k", [&](const StreamParams& p, cudaStream_t s) { return launch_stream<1, 8, 2, 2048>(p, 1, sms, s); }},
      {"w8s3c4k", [&](const StreamParams& p, cudaStream_t s) { return launch_stream<1, 8, 3, 2048>(p, 1, sms, s); }},
      {"w8s4c2k", [&](const StreamParams& p, cudaStream_t s) { return launch_stream<1, 8, 4, 1024>(p, 1, sms, s); }},
      {"w16s2c2k", [&](const StreamParams& p, cudaStream_t s) { return launch_stream<1, 16, 2, 1024>(p, 1, sms, s); }},
      {"w16s2c4k", [&](const StreamParams& p, cudaStream_t s) { return launch_stream<1, 16, 2, 2048>(p, 1, sms, s); }},
      {"w4s3c4k/2", [&](const StreamParams& p, cudaStream_t s) { return launch_stream<1, 4, 3, 2048>(p, 2, sms, s); }},
      {"w8s2c2k/2", [&](const StreamParams& p, cudaStream_t s) { return launch_stream<1, 8, 2, 1024>(p, 2, sms, s); }},
  };
  std::printf("%-20s %6s %8s %8s %8s", "shape (n x k)", "MB", "floor", "cublasLt", "gemv");
  for (const Variant& v : variants) std::printf(" %9s", v.name);
  std::printf("   (us a call; same bits as gemv: =)\n");

  const Shape shapes[] = {
      {"llama qkv", 6144, 4096},     {"llama o", 4096, 4096},       {"llama gate_up", 28672, 4096},
      {"llama down", 4096, 14336},   {"llama lm_head", 128256, 4096}, {"/2 qkv", 3072, 4096},
      {"/2 o", 4096, 2048},          {"/2 gate_up", 14336, 4096},   {"/2 down", 4096, 7168},
      {"/4 qkv", 1536, 4096},        {"/4 o", 4096, 1024},          {"/4 gate_up", 7168, 4096},
      {"/4 down", 4096, 3584},       {"0.6b qkv", 4096, 1024},      {"0.6b gate_up", 6144, 1024},
      {"0.6b down", 1024, 3072},
  };
  troupe::cuda::Gemm gemm;
  const size_t l2 = static_cast<size_t>(prop.l2CacheSize);
  for (const Shape& s : shapes) {
    const size_t w_elems = static_cast<size_t>(s.n * s.k);
    const int copies = static_cast<int>(std::clamp<size_t>(3 * l2 / (w_elems * 2) + 1, 1, 64));
    std::vector<bf16*> w(copies);
    for (int c = 0; c < copies; ++c) {
      TROUPE_CUDA_CHECK(cudaMalloc(&w[c], w_elems * 2));
      fill_random<<<1024, 256, 0, stream>>>(w[c], w_elems, 11u + c);
    }
    bf16 *x, *out, *ref;
    TROUPE_CUDA_CHECK(cudaMalloc(&x, 8 * s.k * 2));
    TROUPE_CUDA_CHECK(cudaMalloc(&out, 8 * s.n * 2));
    TROUPE_CUDA_CHECK(cudaMalloc(&ref, 8 * s.n * 2));
    fill_random<<<64, 256, 0, stream>>>(x, 8 * s.k, 7);
    const int tokens = 1;
    const float cub = graph_us(stream, [&](int i) { gemm.linear(x, w[i % copies], nullptr, out, tokens, s.n, s.k, stream); });
    const float ours = graph_us(stream, [&](int i) {
      troupe::cuda::small_batch_linear(x, w[i % copies], nullptr, out, tokens, s.n, s.k, stream);
    });
    troupe::cuda::small_batch_linear(x, w[0], nullptr, ref, tokens, s.n, s.k, stream);
    std::vector<uint16_t> want(s.n), got(s.n);
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(want.data(), ref, s.n * 2, cudaMemcpyDeviceToHost, stream));
    TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream));
    const double mb = w_elems * 2 / 1e6;
    std::printf("%-20s %6.1f %8.2f %8.2f %8.2f", s.name, mb, w_elems * 2 / (read_gbps * 1e3), cub, ours);
    for (const Variant& v : variants) {
      StreamParams p{x, nullptr, out, s.n, s.k, 0};
      bool ok = true;
      const float us = graph_us(stream, [&](int i) {
        p.w = w[i % copies];
        ok = v.launch(p, stream) && ok;
      });
      if (!ok) {
        std::printf(" %9s", "-");
        continue;
      }
      TROUPE_CUDA_CHECK(cudaMemsetAsync(out, 0, s.n * 2, stream));
      p.w = w[0];
      v.launch(p, stream);
      TROUPE_CUDA_CHECK(cudaMemcpyAsync(got.data(), out, s.n * 2, cudaMemcpyDeviceToHost, stream));
      TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream));
      const bool same = std::memcmp(got.data(), want.data(), s.n * 2) == 0;
      std::printf(" %8.2f%s", us, same ? "=" : "!");
    }
    std::printf("\n");
    for (bf16* q : w) cudaFree(q);
    cudaFree(x), cudaFree(out), cudaFree(ref);
  }
  return 0;
}
