// A device buffer that ops reuse call after call and that grows only when a call needs more: the
// steady state allocates nothing. Growing frees the old buffer with cudaFree, which waits for the
// device, so work still queued on the old memory finishes first. cudaMalloc and cudaFree are illegal
// while a stream is being captured into a CUDA graph: run each captured shape once before capturing,
// so that the buffer already has its final size.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/cuda_check.hpp"

namespace troupe::cuda {

class DeviceScratch {
 public:
  DeviceScratch() = default;
  ~DeviceScratch() {
    if (data_) cudaFree(data_);
  }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;

  // At least `bytes` bytes (256-byte aligned, as cudaMalloc returns them), on the current device.
  void* get(std::size_t bytes) {
    if (bytes <= capacity_ && data_) return data_;
    if (data_) {
      TROUPE_CUDA_CHECK(cudaFree(data_));
      data_ = nullptr;
      capacity_ = 0;
    }
    // A little headroom so that slowly growing batches do not reallocate at every step.
    const std::size_t size = bytes + bytes / 8 + 256;
    TROUPE_CUDA_CHECK(cudaMalloc(&data_, size));
    capacity_ = size;
    return data_;
  }

  std::size_t capacity() const { return capacity_; }

 private:
  void* data_ = nullptr;
  std::size_t capacity_ = 0;
};

// Carves consecutive 256-byte-aligned pieces out of one scratch allocation. Used twice with the same
// sequence of takes: once without a base to measure, once with the buffer to hand out pointers.
class ScratchCarver {
 public:
  explicit ScratchCarver(void* base = nullptr) : base_(static_cast<std::byte*>(base)) {}

  template <class T>
  T* take(std::size_t count) {
    const std::size_t offset = used_;
    used_ += (count * sizeof(T) + 255) / 256 * 256;
    return base_ ? reinterpret_cast<T*>(base_ + offset) : nullptr;
  }
  std::size_t bytes() const { return used_; }

 private:
  std::byte* base_;
  std::size_t used_ = 0;
};

}  // namespace troupe::cuda
