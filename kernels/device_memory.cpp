#include "kernels/device_memory.hpp"

#include <cuda_runtime.h>

#include <cstring>

#include "kernels/cuda_check.hpp"

namespace troupe::cuda {

struct BlockCache::State {
  int device = 0;
  mutable std::mutex mutex;
  std::map<size_t, std::vector<void*>> idle;  // size class -> free blocks
  size_t reserved = 0;
  size_t idle_bytes = 0;

  ~State() {
    int current = device;
    cudaGetDevice(&current);
    cudaSetDevice(device);
    for (auto& [size, blocks] : idle)
      for (void* p : blocks) cudaFree(p);
    cudaSetDevice(current);
    cudaGetLastError();
  }
};

namespace {

size_t size_class(size_t bytes) {
  constexpr size_t small = 512, large = size_t{2} << 20, threshold = size_t{1} << 20;
  bytes = std::max<size_t>(bytes, 1);
  return bytes < threshold ? (bytes + small - 1) / small * small : (bytes + large - 1) / large * large;
}

}  // namespace

BlockCache::BlockCache(int device) : state_(std::make_shared<State>()) { state_->device = device; }

std::shared_ptr<void> BlockCache::get(size_t bytes) {
  const size_t cls = size_class(bytes);
  void* p = nullptr;
  {
    std::lock_guard lock(state_->mutex);
    auto it = state_->idle.find(cls);
    if (it != state_->idle.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      state_->idle_bytes -= cls;
    }
  }
  if (!p) {
    cudaError_t err = cudaMalloc(&p, cls);
    if (err == cudaErrorMemoryAllocation) {
      // Give the idle blocks back to the driver and try once more before failing.
      cudaGetLastError();
      std::lock_guard lock(state_->mutex);
      for (auto& [size, blocks] : state_->idle)
        for (void* q : blocks) {
          cudaFree(q);
          state_->reserved -= size;
        }
      state_->idle.clear();
      state_->idle_bytes = 0;
      err = cudaMalloc(&p, cls);
    }
    TROUPE_CUDA_CHECK(err);
    std::lock_guard lock(state_->mutex);
    state_->reserved += cls;
  }
  return std::shared_ptr<void>(p, [state = state_, cls](void* q) {
    std::lock_guard lock(state->mutex);
    state->idle[cls].push_back(q);
    state->idle_bytes += cls;
  });
}

size_t BlockCache::reserved_bytes() const {
  std::lock_guard lock(state_->mutex);
  return state_->reserved;
}

size_t BlockCache::idle_bytes() const {
  std::lock_guard lock(state_->mutex);
  return state_->idle_bytes;
}

StagingRing::StagingRing(size_t bytes) : bytes_(bytes) {
  // Portable: any device's stream may copy from it (one ring per backend, backends per device).
  TROUPE_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&base_), bytes_, cudaHostAllocPortable));
}

StagingRing::~StagingRing() {
  cudaFreeHost(base_);
  cudaGetLastError();
}

const void* StagingRing::stage(const void* src, size_t n, void* stream) {
  const size_t aligned = (n + 255) / 256 * 256;
  if (head_ + aligned > bytes_) {
    // Wrapping around: the copies and kernels queued from the start of the ring must have read it by now.
    TROUPE_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
    head_ = 0;
  }
  std::byte* at = base_ + head_;
  std::memcpy(at, src, n);
  head_ += aligned;
  return at;
}

void StagingRing::copy_to_device(void* dst, const void* src, size_t n, void* stream) {
  const void* staged = stage(src, n, stream);
  TROUPE_CUDA_CHECK(cudaMemcpyAsync(dst, staged, n, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream)));
}

}  // namespace troupe::cuda
