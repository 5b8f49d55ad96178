// Device helpers that every kernel file shares: reductions, 16-byte bf16 packs, launch arithmetic.
// Included by .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "kernels/cuda_check.hpp"
#include "kernels/switches.hpp"
#ifdef TROUPE_KERNEL_CLOCK
#include "kernels/kernel_clock.hpp"
#endif

namespace troupe::cuda {

using bf16 = __nv_bfloat16;

constexpr int warp_size = 32;

// A shared-memory pointer as the 32-bit address that cp.async, ldmatrix, mbarrier and the bulk copy
// instructions take.
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Eight bf16 in one 16-byte load or store (LDG.128 / STG.128): the widest access a thread can make,
// which is what memory-bound kernels need to come near HBM bandwidth. Held as a uint4 because a copy
// of a struct of __nv_bfloat162 is split into 4-byte accesses; get/set take constant indices (unrolled
// loops) so that it stays in registers.
struct alignas(16) Bf16x8 {
  uint4 raw;

  __device__ __forceinline__ float2 get(int j) const {
    return __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(&raw)[j]);
  }
  __device__ __forceinline__ void set(int j, float a, float b) {
    reinterpret_cast<__nv_bfloat162*>(&raw)[j] = __floats2bfloat162_rn(a, b);
  }
  // The eight values as f32 (exact).
  __device__ __forceinline__ void to_floats(float (&v)[8]) const {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = get(j);
      v[2 * j] = f.x;
      v[2 * j + 1] = f.y;
    }
  }
  // Eight f32 rounded to bf16 (to nearest even).
  static __device__ __forceinline__ Bf16x8 of_floats(const float (&v)[8]) {
    Bf16x8 r;
#pragma unroll
    for (int j = 0; j < 4; ++j) r.set(j, v[2 * j], v[2 * j + 1]);
    return r;
  }
};

__device__ __forceinline__ Bf16x8 load8(const __nv_bfloat16* p) { return {*reinterpret_cast<const uint4*>(p)}; }
__device__ __forceinline__ void store8(__nv_bfloat16* p, const Bf16x8& v) { *reinterpret_cast<uint4*>(p) = v.raw; }

inline bool is_aligned(const void* p, std::size_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Threads for a block that walks `items` per row: a whole number of warps, no more than `max_threads`.
inline int block_threads(int64_t items, int max_threads) {
  int64_t warps = ceil_div(items, warp_size);
  if (warps < 1) warps = 1;
  if (warps * warp_size > max_threads) return max_threads;
  return static_cast<int>(warps * warp_size);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = warp_size / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block, returned to every thread. blockDim.x must be a multiple of 32; call it from
// every thread of the block, at most once per kernel (it owns its shared memory).
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_partial[32];
  __shared__ float total;
  const int lane = threadIdx.x % warp_size;
  const int warp = threadIdx.x / warp_size;
  v = warp_sum(v);
  if (lane == 0) warp_partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x / warp_size;
    v = lane < warps ? warp_partial[lane] : 0.0f;
    v = warp_sum(v);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

#ifdef TROUPE_KERNEL_CLOCK
// The measurement build's records (kernels/kernel_clock.hpp), kept by the wait below.
namespace {
__device__ void* kernel_clock_device_buffer;  // this translation unit's copy, set at its first launch
bool kernel_clock_bound = false;
}  // namespace
__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}
// Appends one record for this CTA (its thread 0 calls it).
__device__ __forceinline__ void append_clock_record(uint64_t before, uint64_t after, uint32_t grid, uint32_t smem) {
  if (kernel_clock_device_buffer == nullptr) return;
  auto* count = static_cast<unsigned long long*>(kernel_clock_device_buffer);
  const unsigned long long i = atomicAdd(count, 1ull);
  if (i >= kKernelClockRecords) return;
  uint32_t sm;
  asm volatile("mov.u32 %0, %smid;" : "=r"(sm));
  auto* r = reinterpret_cast<KernelClockRecord*>(static_cast<char*>(kernel_clock_device_buffer) + 16) + i;
  *r = {before, after, grid, blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z), sm, smem};
}
#endif

// Programmatic dependent launch (Hopper): a kernel launched with launch_overlapped may start while
// the kernel before it on the stream still runs. What it reads before wait_for_previous_kernel() must
// not come from that kernel (weights, tables, step inputs copied in before the step), and it writes
// nothing before it; the wait returns once every earlier kernel has finished and its writes are
// visible. So a decode step's kernels, each a few microseconds, stop paying their launch and their
// first loads one after another. Every CTA of such a kernel calls the wait, even one with no work, so
// that the kernel cannot finish before the one it follows. Where the kernel was launched plainly, both
// calls do nothing.
#ifdef TROUPE_KERNEL_CLOCK
__device__ __forceinline__ void wait_for_previous_kernel() {
  const uint64_t before = global_ns();
  asm volatile("griddepcontrol.wait;" ::: "memory");
  const uint64_t after = global_ns();
  if (threadIdx.x == 0) {
    uint32_t smem;
    asm volatile("mov.u32 %0, %dynamic_smem_size;" : "=r"(smem));
    append_clock_record(before, after, gridDim.x * gridDim.y * gridDim.z, smem);
  }
}
// A point inside a kernel: thread 0 of each CTA records the time, its tag in `grid` under kClockMark.
__device__ __forceinline__ void clock_mark(uint32_t tag) {
  if (threadIdx.x == 0) {
    const uint64_t now = global_ns();
    append_clock_record(now, now, kClockMark | tag, 0);
  }
}
#else
__device__ __forceinline__ void wait_for_previous_kernel() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void clock_mark(uint32_t) {}
#endif
// Lets the next kernel on the stream be launched now (its CTAs take the SM room this one leaves).
__device__ __forceinline__ void let_next_kernel_start() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }

// Whether launch_overlapped asks for programmatic dependent launch: yes unless TROUPE_PDL=0 (to measure
// without it).
inline bool overlapped_launches() {
  static const bool on = switched_on("TROUPE_PDL");
  return on;
}

// Runs set_up() once per device for one `done` set (a bit per device; beyond 64 devices, every call
// runs it): a kernel's attributes, which must be set on each device before its first launch there.
// Two threads may both run it for one device; setting the same attributes twice is harmless.
template <typename F>
void once_per_device(std::atomic<uint64_t>& done, F&& set_up) {
  int device = 0;
  TROUPE_CUDA_CHECK(cudaGetDevice(&device));
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit)) return;
  set_up();
  done.fetch_or(bit, std::memory_order_acq_rel);
}

// An attribute of the current device (its SMs, the shared memory a block may opt into), looked up on
// the first call and kept: the GPUs that one process drives are of one kind.
template <cudaDeviceAttr A>
int device_attribute() {
  static std::atomic<int> value{0};
  if (value.load(std::memory_order_relaxed) == 0) {
    int device = 0, v = 0;
    TROUPE_CUDA_CHECK(cudaGetDevice(&device));
    TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&v, A, device));
    value.store(v, std::memory_order_relaxed);
  }
  return value.load(std::memory_order_relaxed);
}

// The decode attention kernel asks for all of L1 as shared memory (kernels/attention.cu), and an SM
// changes its L1/shared split only once it is empty: kernels that overlap it (programmatic dependent
// launch) take the same split, or they would wait for each other to drain, so launch_overlapped asks
// it for every kernel. TROUPE_CARVEOUT=0 leaves the driver's choice, to measure.
template <auto Kernel>
void prefer_max_shared_carveout() {
  static const bool on = switched_on("TROUPE_CARVEOUT");
  if (!on) return;
  static std::atomic<uint64_t> done{0};
  once_per_device(done, [] {
    TROUPE_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(Kernel),
                                           cudaFuncAttributePreferredSharedMemoryCarveout,
                                           cudaSharedmemCarveoutMaxShared));
  });
}

// Kernel<<<grid, block, smem, stream>>>(args...), with programmatic dependent launch and the shared
// L1/shared split (see above): only for kernels that call wait_for_previous_kernel() in every CTA
// before touching what earlier kernels write. Stream capture turns it into a programmatic edge of the
// CUDA graph. cluster_x > 1: the grid in thread-block clusters of cluster_x CTAs along x.
template <auto Kernel, typename... Args>
void launch_overlapped_clusters(dim3 grid, unsigned cluster_x, dim3 block, size_t smem, cudaStream_t stream,
                                Args&&... args) {
  prefer_max_shared_carveout<Kernel>();
#ifdef TROUPE_KERNEL_CLOCK
  // Device 0's kernels only (rank 0 of a group in one process): one timeline, on one clock.
  int device = -1;
  if (!kernel_clock_bound && cudaGetDevice(&device) == cudaSuccess && device == 0) {
    void* buffer = kernel_clock_buffer();
    TROUPE_CUDA_CHECK(cudaMemcpyToSymbol(kernel_clock_device_buffer, &buffer, sizeof buffer));
    kernel_clock_bound = true;
  }
#endif
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attributes[2]{};
  unsigned count = 0;
  if (overlapped_launches()) {
    attributes[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[count++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster_x > 1) {
    attributes[count].id = cudaLaunchAttributeClusterDimension;
    attributes[count++].val.clusterDim = {cluster_x, 1, 1};
  }
  config.attrs = attributes;
  config.numAttrs = count;
  TROUPE_CUDA_CHECK(cudaLaunchKernelEx(&config, Kernel, std::forward<Args>(args)...));
}

template <auto Kernel, typename... Args>
void launch_overlapped(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
  launch_overlapped_clusters<Kernel>(grid, 1, block, smem, stream, std::forward<Args>(args)...);
}

}  // namespace troupe::cuda
