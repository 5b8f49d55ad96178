// Times the attention kernels against their floors, through the launcher (kernels/attention.cuh)
// alone, so it builds with nvcc and nothing of the engine:
//   nvcc -std=c++20 -O2 -gencode=arch=compute_90a,code=sm_90a -I. tools/attention_bench.cu \
//        kernels/attention.cu kernels/paged_decode.cu kernels/flash_prefill.cu -o attention_bench
// Decode is memory-bound: its floor is the K/V bytes of every sequence over the bandwidth that a
// device-to-device copy reaches in the same run. Prefill is compute-bound: TFLOP/s of the causal
// QKᵀ and PV products (4 · head_dim · visible pairs · heads). Cache contents are random (never zeros).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/attention.cuh"
#include "kernels/cuda_check.hpp"
#include "tools/device_fill.cuh"

namespace {

using troupe::cuda::AttentionArgs;

template <class T>
T* device_copy(const std::vector<T>& v) {
  T* p = nullptr;
  TROUPE_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(v.size() * sizeof(T), 16)));
  TROUPE_CUDA_CHECK(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

template <class F>
float median_ms(F&& f, int reps = 30) {
  cudaEvent_t a, b;
  TROUPE_CUDA_CHECK(cudaEventCreate(&a));
  TROUPE_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) f();
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    TROUPE_CUDA_CHECK(cudaEventRecord(a));
    f();
    TROUPE_CUDA_CHECK(cudaEventRecord(b));
    TROUPE_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    TROUPE_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  TROUPE_CUDA_CHECK(cudaEventDestroy(a));
  TROUPE_CUDA_CHECK(cudaEventDestroy(b));
  return t[t.size() / 2];
}

struct Case {
  const char* name;
  int seqs, query_len, context_len, heads, kv_heads, head_dim, block_size;
};

void run(const Case& c, int sms, float* workspace, size_t workspace_floats, double copy_gbps) {
  const int bs = c.block_size, d = c.head_dim;
  const int blocks_per_seq = (c.context_len + bs - 1) / bs;
  const int num_blocks = c.seqs * blocks_per_seq;
  std::vector<int32_t> pool(static_cast<size_t>(num_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), std::mt19937(1));
  std::vector<int32_t> query_start, context_lens(static_cast<size_t>(c.seqs), c.context_len);
  for (int s = 0; s <= c.seqs; ++s) query_start.push_back(s * c.query_len);
  const int tokens = c.seqs * c.query_len;
  const size_t cache_elems = size_t(num_blocks) * bs * c.kv_heads * d;
  const size_t qkv_elems = size_t(tokens) * (c.heads + 2 * c.kv_heads) * d;
  __nv_bfloat16 *k, *v, *qkv, *out;
  TROUPE_CUDA_CHECK(cudaMalloc(&k, cache_elems * 2));
  TROUPE_CUDA_CHECK(cudaMalloc(&v, cache_elems * 2));
  TROUPE_CUDA_CHECK(cudaMalloc(&qkv, qkv_elems * 2));
  TROUPE_CUDA_CHECK(cudaMalloc(&out, size_t(tokens) * c.heads * d * 2));
  fill_random<<<1024, 256>>>(k, cache_elems, 1);
  fill_random<<<1024, 256>>>(v, cache_elems, 2);
  fill_random<<<1024, 256>>>(qkv, qkv_elems, 3);
  int32_t* d_tables = device_copy(pool);
  int32_t* d_starts = device_copy(query_start);
  int32_t* d_lens = device_copy(context_lens);

  AttentionArgs a;
  a.qkv = qkv;
  a.out = out;
  a.k_cache = k;
  a.v_cache = v;
  a.query_start = d_starts;
  a.context_lens = d_lens;
  a.block_tables = d_tables;
  a.num_seqs = c.seqs;
  a.num_tokens = tokens;
  a.max_query_len = c.query_len;
  a.max_context_len = c.context_len;
  a.max_blocks_per_seq = blocks_per_seq;
  a.block_size = bs;
  a.num_heads = c.heads;
  a.num_kv_heads = c.kv_heads;
  a.head_dim = d;
  a.scale = 1.0f / std::sqrt(static_cast<float>(d));
  a.workspace = workspace;
  a.workspace_floats = workspace_floats;
  a.sm_count = sms;
  const float ms = median_ms([&] { troupe::cuda::attention(a, nullptr); });
  TROUPE_CUDA_CHECK(cudaDeviceSynchronize());

  const double kv_bytes = 2.0 * 2.0 * double(c.seqs) * c.context_len * c.kv_heads * d;
  const double qo_bytes = 2.0 * 2.0 * double(tokens) * c.heads * d;
  // Visible (query, key) pairs under the causal mask.
  double pairs = 0;
  for (int i = 0; i < c.query_len; ++i) pairs += c.context_len - c.query_len + i + 1;
  pairs *= c.seqs;
  const double flops = 4.0 * pairs * c.heads * d;
  const double floor_ms = (kv_bytes + qo_bytes) / (copy_gbps * 1e9) * 1e3;
  std::printf("%-34s %9.3f ms  %7.0f GB/s  %6.1f TFLOP/s  floor(bytes) %8.3f ms  %5.0f%% of copy bw\n", c.name, ms,
              (kv_bytes + qo_bytes) / (ms * 1e-3) / 1e9, flops / (ms * 1e-3) / 1e12, floor_ms, 100.0 * floor_ms / ms);
  cudaFree(k), cudaFree(v), cudaFree(qkv), cudaFree(out), cudaFree(d_tables), cudaFree(d_starts), cudaFree(d_lens);
}

}  // namespace

int main() {
  int sms = 0;
  TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaDeviceProp prop{};
  TROUPE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));

  // The bandwidth ceiling: a 2 GiB device-to-device copy, bytes read plus written.
  const size_t copy_bytes = size_t{1} << 31;
  void *src, *dst;
  TROUPE_CUDA_CHECK(cudaMalloc(&src, copy_bytes));
  TROUPE_CUDA_CHECK(cudaMalloc(&dst, copy_bytes));
  TROUPE_CUDA_CHECK(cudaMemset(src, 1, copy_bytes));
  const float copy_ms = median_ms([&] { TROUPE_CUDA_CHECK(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice)); }, 10);
  const double copy_gbps = 2.0 * copy_bytes / (copy_ms * 1e-3) / 1e9;
  cudaFree(src), cudaFree(dst);
  std::printf("%s, %d SMs: device-to-device copy %.0f GB/s (read + write)\n", prop.name, sms, copy_gbps);

  const size_t ws_floats = troupe::cuda::attention_workspace_floats(sms);
  float* ws = nullptr;
  TROUPE_CUDA_CHECK(cudaMalloc(&ws, ws_floats * sizeof(float)));

  const Case cases[] = {
      // name                               seqs  q   ctx    H  Hkv  D   bs
      {"decode llama8b 1x32768 (split)", 1, 1, 32768, 32, 8, 128, 16},
      {"decode llama8b 1x4096 (split)", 1, 1, 4096, 32, 8, 128, 16},
      {"decode llama8b 4x16384 (split)", 4, 1, 16384, 32, 8, 128, 16},
      {"decode llama8b 8x8192 (split)", 8, 1, 8192, 32, 8, 128, 16},
      {"decode llama8b 32x4096", 32, 1, 4096, 32, 8, 128, 16},
      {"decode llama8b 128x2048", 128, 1, 2048, 32, 8, 128, 16},
      {"decode llama8b 256x1024", 256, 1, 1024, 32, 8, 128, 16},
      {"decode qwen3 G2 64x4096", 64, 1, 4096, 16, 8, 128, 16},
      {"decode G8 64x4096", 64, 1, 4096, 64, 8, 128, 16},
      {"decode D64 G4 128x2048", 128, 1, 2048, 16, 4, 64, 16},
      {"decode llama8b 128x2048 bs32", 128, 1, 2048, 32, 8, 128, 32},
      {"prefill llama8b 1x4096", 1, 4096, 4096, 32, 8, 128, 16},
      {"prefill llama8b 8x1024", 8, 1024, 1024, 32, 8, 128, 16},
      {"prefill D64 G4 1x4096", 1, 4096, 4096, 16, 4, 64, 16},
      {"chunked prefill 4x512 of 8192", 4, 512, 8192, 32, 8, 128, 16},
  };
  for (const Case& c : cases) run(c, sms, ws, ws_floats, copy_gbps);
  cudaFree(ws);
  return 0;
}
