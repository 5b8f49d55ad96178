// Hopper's shared-memory transaction barrier (mbarrier) as troupe's kernels use it: one arrival a
// phase, by the thread that says how many bytes the phase waits for, and those bytes completed on it
// by asynchronous copies (the streaming GEMV's cp.async.bulk, kernels/stream_gemv.cu) or by other CTAs'
// stores (the decode attention's push combine, st.async, kernels/paged_decode.cu).
#pragma once

#include <cstdint>

#include "kernels/common.cuh"

namespace troupe::cuda {

// The barrier at bar, expecting one arrival a phase.
__device__ __forceinline__ void mbarrier_init(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(bar)) : "memory");
}

// This thread's barrier initialisations, visible to the copy engine and the cluster before anything
// completes bytes on them.
__device__ __forceinline__ void mbarrier_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }

// The current phase's arrival: the phase completes once `bytes` more have landed.
__device__ __forceinline__ void mbarrier_expect_bytes(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}

// Spins until the phase of parity `parity` has completed. CLUSTER: acquires at cluster scope, for
// bytes that other CTAs of the cluster stored.
template <bool CLUSTER = false>
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    if constexpr (CLUSTER)
      asm volatile(
          "{\n .reg .pred p;\n mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, "
          "0, p;\n}\n"
          : "=r"(done)
          : "r"(smem_u32(bar)), "r"(parity)
          : "memory");
    else
      asm volatile(
          "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
          : "=r"(done)
          : "r"(smem_u32(bar)), "r"(parity)
          : "memory");
  } while (!done);
}

}  // namespace troupe::cuda
