#include "kernels/pushed_all_reduce.hpp"

#include <atomic>
#include <stdexcept>
#include <string>

#include "kernels/pushed_all_reduce.cuh"

namespace troupe::cuda {
namespace {

// One block: a decode step's message is a few KiB, and one block's threads cover it in a pass or two.
constexpr int kThreads = 512;

__global__ void __launch_bounds__(kThreads) send_kernel(const uint4* delta, size_t packs, PushedAllReduce ar) {
  wait_for_previous_kernel();
  let_next_kernel_start();
  const uint32_t call = pushed::current_call(ar);
  for (size_t i = threadIdx.x; i < packs; i += kThreads) {
    const uint4 v = packs::scrub(__ldcg(delta + i));
    for (int q = 0; q < ar.ranks; ++q)
      if (q != ar.rank) packs::store_volatile(reinterpret_cast<uint4*>(pushed::slot(ar, q, call, ar.rank)) + i, v);
  }
}

// Pack i of call `call`: residual[i] += the ranks' parts summed in rank order (this rank's from delta),
// as the peer all-reduce's all_reduce_add computes it; returns the new residual pack. The residual and
// the first looks at the peers' parts are loaded together, so that only the peers' arrival stands
// between them and the sum (the residual loaded after the parts had arrived cost a round trip: tp2
// 2.615 -> 2.610 ms, tp4 1.713 -> 1.707 on 4 × H200, llama-3.1-8b's batch-1 step).
__device__ __forceinline__ uint4 gather_pack(const uint4* delta, uint4* residual, size_t i, const PushedAllReduce& ar,
                                             uint32_t call) {
  auto box = [&](int q) { return reinterpret_cast<uint4*>(pushed::slot(ar, ar.rank, call, q)) + i; };
  const uint4 before = __ldcg(residual + i);
  uint4 v[PushedAllReduce::max_ranks];
#pragma unroll
  for (int q = 0; q < PushedAllReduce::max_ranks; ++q) {
    if (q >= ar.ranks) break;
    v[q] = q == ar.rank ? packs::scrub(__ldcg(delta + i)) : packs::load_volatile(box(q));
  }
#pragma unroll
  for (int q = 0; q < PushedAllReduce::max_ranks; ++q) {
    if (q >= ar.ranks) break;
    if (q != ar.rank) v[q] = packs::receive(box(q), v[q]);
  }
  if (i == 0) clock_mark(2);  // the peers' first pack is in (a measurement build's record)
  const uint4 terms[2] = {before, packs::sum_in_order<bf16>(v, ar.ranks)};
  const uint4 sum = packs::sum_in_order<bf16>(terms);
  residual[i] = sum;
  return sum;
}

// residual += the ranks' sum, pack by pack; then the next call's mailboxes are in use.
__global__ void __launch_bounds__(kThreads) gather_add_kernel(const uint4* delta, uint4* residual, size_t packs,
                                                              PushedAllReduce ar) {
  wait_for_previous_kernel();
  let_next_kernel_start();
  const uint32_t call = pushed::current_call(ar);
  for (size_t i = threadIdx.x; i < packs; i += kThreads) gather_pack(delta, residual, i, ar, call);
  __syncthreads();
  clock_mark(1);  // summed
  if (threadIdx.x == 0) ar.state[0] = call + 1;
}

// Shared memory the kernel asks for and does not use, so that its block cannot start beside a CTA of
// the streaming GEMV (kernels/stream_gemv.cu: at least 116 KB) that ends the sublayer before it: where
// it did (its 61 registers a thread fit beside one), llama-3.1-8b's tp2 step took 2.619 / 2.624 ms
// against 2.614 / 2.613, and 2.600 against 2.593 with the residual loaded first (4 × H200).
constexpr int kApartFromStreamingBytes = 120 * 1024;

// gather_add_kernel, then the RMSNorm of the residual it has made, into normed: the next sublayer's
// input, which the projection after it then takes as it is instead of normalising the residual again
// in each of its blocks. The arithmetic is kernels/rmsnorm.cu's bit for bit: that kernel's thread j
// takes packs j, j + 512, … of a row (or pack j alone, where a row has fewer than 512), which is what
// this block's thread j gathers, and the sums of its norm_warps warps are added as its block_sum adds
// them.
//
// The new residual's packs wait for the norm in the shared memory the block reserves anyway (`kept`,
// where they fit) instead of being read back from the residual in global memory, an L2 round trip
// while the next projection's early weight requests fill the memory system: llama-3.1-8b's batch-1
// step at tp2 on 2 × H200, three alternations, 2.535–2.537 -> 2.531–2.532 ms (same bits).
__global__ void __launch_bounds__(kThreads)
    gather_add_norm_kernel(const uint4* delta, uint4* residual, int rows, int row_packs, PushedAllReduce ar,
                           const uint4* norm_weight, float eps, uint4* normed, int norm_warps, bool keep) {
  extern __shared__ uint4 kept[];
  // The norm's weight comes from no kernel before: asked for before the wait.
  const uint4 first_weight = threadIdx.x < row_packs ? __ldg(norm_weight + threadIdx.x) : uint4{};
  wait_for_previous_kernel();
  let_next_kernel_start();
  const uint32_t call = pushed::current_call(ar);
  __shared__ float partial[kGatherNormMaxRows][kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int t = 0; t < rows; ++t) {
    float sum_sq = 0.0f;
    for (int j = threadIdx.x; j < row_packs; j += kThreads) {
      const uint4 sum = gather_pack(delta, residual, static_cast<size_t>(t) * row_packs + j, ar, call);
      if (keep) kept[t * row_packs + j] = sum;
      float f[8];
      Bf16x8{sum}.to_floats(f);
#pragma unroll
      for (int e = 0; e < 8; ++e) sum_sq += f[e] * f[e];
    }
    sum_sq = warp_sum(sum_sq);
    if (lane == 0) partial[t][warp] = sum_sq;
  }
  __syncthreads();
  clock_mark(1);  // summed
  if (threadIdx.x == 0) ar.state[0] = call + 1;
  for (int t = 0; t < rows; ++t) {
    const float total = warp_sum(lane < norm_warps ? partial[t][lane] : 0.0f);
    const float inv_rms = rsqrtf(total / static_cast<float>(row_packs * 8) + eps);
    for (int j = threadIdx.x; j < row_packs; j += kThreads) {
      const size_t i = static_cast<size_t>(t) * row_packs + j;
      float x[8], g[8];
      Bf16x8{keep ? kept[i] : residual[i]}.to_floats(x);  // this thread's own sum, stored above
      Bf16x8{j == static_cast<int>(threadIdx.x) ? first_weight : __ldg(norm_weight + j)}.to_floats(g);
#pragma unroll
      for (int e = 0; e < 8; ++e) x[e] = g[e] * (x[e] * inv_rms);
      normed[i] = Bf16x8::of_floats(x).raw;
    }
  }
}

void check(const void* a, const void* b, size_t n, const PushedAllReduce& ar, const char* op) {
  if (n % 8 != 0 || n * 2 > ar.slot_bytes || !is_aligned(a, 16) || (b && !is_aligned(b, 16)))
    throw std::invalid_argument(std::string(op) + ": " + std::to_string(n) +
                                " bf16 elements (a multiple of 8, 16-byte aligned, at most " +
                                std::to_string(ar.slot_bytes / 2) + ") needed");
}

}  // namespace

void pushed_send(const bf16* delta, size_t n, const PushedAllReduce& ar, cudaStream_t stream) {
  check(delta, nullptr, n, ar, "pushed_send");
  launch_overlapped<send_kernel>(dim3(1), dim3(kThreads), 0, stream, reinterpret_cast<const uint4*>(delta), n / 8, ar);
  TROUPE_CUDA_CHECK_LAUNCH(send_kernel);
}

void pushed_gather_add(const bf16* delta, bf16* residual, size_t n, const PushedAllReduce& ar, cudaStream_t stream) {
  check(delta, residual, n, ar, "pushed_gather_add");
  launch_overlapped<gather_add_kernel>(dim3(1), dim3(kThreads), 0, stream, reinterpret_cast<const uint4*>(delta),
                                       reinterpret_cast<uint4*>(residual), n / 8, ar);
  TROUPE_CUDA_CHECK_LAUNCH(gather_add_kernel);
}

void pushed_gather_add_rms_norm(const bf16* delta, bf16* residual, size_t n, const PushedAllReduce& ar,
                                const bf16* norm_weight, size_t width, float eps, bf16* normed, cudaStream_t stream) {
  check(delta, residual, n, ar, "pushed_gather_add_rms_norm");
  if (width == 0 || width % 8 != 0 || n % width != 0 || n / width > kGatherNormMaxRows || !is_aligned(norm_weight, 16) ||
      !is_aligned(normed, 16))
    throw std::invalid_argument("pushed_gather_add_rms_norm: " + std::to_string(n) + " elements in rows of " +
                                std::to_string(width) + " (a multiple of 8; at most " + std::to_string(kGatherNormMaxRows) +
                                " rows; 16-byte aligned norm weight and output) needed");
  static std::atomic<uint64_t> granted{0};
  once_per_device(granted, [] {
    TROUPE_CUDA_CHECK(cudaFuncSetAttribute(gather_add_norm_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           kApartFromStreamingBytes));
  });
  const int row_packs = static_cast<int>(width / 8);
  // The warps of kernels/rmsnorm.cu's block for a row of this width.
  const int norm_warps = block_threads(row_packs, kThreads) / warp_size;
  // TROUPE_GATHER_KEEP=0 reads the packs back from the residual, to measure.
  static const bool keep_on = switched_on("TROUPE_GATHER_KEEP");
  const bool keep = keep_on && n * 2 <= kApartFromStreamingBytes;
  launch_overlapped<gather_add_norm_kernel>(dim3(1), dim3(kThreads), size_t{kApartFromStreamingBytes}, stream,
                                            reinterpret_cast<const uint4*>(delta), reinterpret_cast<uint4*>(residual),
                                            static_cast<int>(n / width), row_packs, ar,
                                            reinterpret_cast<const uint4*>(norm_weight), eps,
                                            reinterpret_cast<uint4*>(normed), norm_warps, keep);
  TROUPE_CUDA_CHECK_LAUNCH(gather_add_norm_kernel);
}

}  // namespace troupe::cuda
