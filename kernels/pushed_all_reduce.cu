#include "kernels/pushed_all_reduce.hpp"

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

// residual += the ranks' parts summed in rank order (this rank's from delta), as the peer all-reduce's
// all_reduce_add computes it; the first looks at a pack's peer parts are issued together.
__global__ void __launch_bounds__(kThreads) gather_add_kernel(const uint4* delta, uint4* residual, size_t packs,
                                                              PushedAllReduce ar) {
  wait_for_previous_kernel();
  let_next_kernel_start();
  const uint32_t call = pushed::current_call(ar);
  for (size_t i = threadIdx.x; i < packs; i += kThreads) {
    auto box = [&](int q) { return reinterpret_cast<uint4*>(pushed::slot(ar, ar.rank, call, q)) + i; };
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
    const uint4 terms[2] = {__ldcg(residual + i), packs::sum_in_order<bf16>(v, ar.ranks)};
    residual[i] = packs::sum_in_order<bf16>(terms);
  }
  __syncthreads();
  clock_mark(1);  // summed
  if (threadIdx.x == 0) ar.state[0] = call + 1;
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

}  // namespace troupe::cuda
