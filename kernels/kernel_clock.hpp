// A measurement build's record of when each CTA of an overlapped kernel reached and left
// griddepcontrol.wait (kernels/common.cuh), to see a decode step's critical path kernel by kernel.
// Built only with cmake -DTROUPE_KERNEL_CLOCK=ON; TROUPE_KERNEL_CLOCK=FILE names where the backend's
// destructor writes the records (binary: a u64 count, then the records), which tools/kernel_clock.py
// reads. clock_mark(tag) (kernels/common.cuh) adds a point inside a kernel.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace troupe::cuda {

struct KernelClockRecord {
  uint64_t before_wait, after_wait;  // %globaltimer, ns (a mark: its time, twice)
  uint32_t grid, block_index, sm, dynamic_smem;  // grid: CTAs of the launch, or kClockMark | a mark's tag
};

constexpr uint32_t kClockMark = 0x80000000u;

constexpr uint64_t kKernelClockRecords = uint64_t{1} << 20;

// Device memory: a u64 count, then kKernelClockRecords records. One for the process, on device 0,
// whose kernels alone record (launch_overlapped binds it only there).
inline void* kernel_clock_buffer() {
  static void* buffer = [] {
    void* p = nullptr;
    if (cudaMalloc(&p, 16 + kKernelClockRecords * sizeof(KernelClockRecord)) != cudaSuccess) return (void*)nullptr;
    cudaMemset(p, 0, 16);
    return p;
  }();
  return buffer;
}

inline void dump_kernel_clock() {
  const char* path = std::getenv("TROUPE_KERNEL_CLOCK");
  int device = -1;
  if (path == nullptr || cudaGetDevice(&device) != cudaSuccess || device != 0) return;
  void* buffer = kernel_clock_buffer();
  if (buffer == nullptr) return;
  cudaDeviceSynchronize();
  uint64_t count = 0;
  cudaMemcpy(&count, buffer, 8, cudaMemcpyDeviceToHost);
  if (count > kKernelClockRecords) count = kKernelClockRecords;
  auto* records = static_cast<KernelClockRecord*>(std::malloc(count * sizeof(KernelClockRecord) + 1));
  cudaMemcpy(records, static_cast<char*>(buffer) + 16, count * sizeof(KernelClockRecord), cudaMemcpyDeviceToHost);
  if (FILE* f = std::fopen(path, "wb")) {
    std::fwrite(&count, 8, 1, f);
    std::fwrite(records, sizeof(KernelClockRecord), count, f);
    std::fclose(f);
  }
  std::free(records);
}

}  // namespace troupe::cuda
