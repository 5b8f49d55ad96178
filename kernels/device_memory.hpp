// Device memory for one backend: a caching allocator and a pinned staging ring.
//
// Every op of a backend runs on its one stream, so a block freed by the host can be handed to the
// next allocation at once: the stream orders the new user's work after the old user's. That makes
// steady-state steps allocation-free (no cudaMalloc/cudaFree, which synchronise the device) and
// keeps a captured CUDA graph's buffers valid for its replays.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace troupe::cuda {

class BlockCache {
 public:
  explicit BlockCache(int device);

  // At least `bytes` of device memory (size classes: 512 B steps below 1 MiB, 2 MiB steps above),
  // reused from freed blocks of the same class when there is one. Dropping the last reference
  // returns the block to the cache; the cache's memory is released when the cache and every block
  // are gone.
  std::shared_ptr<void> get(size_t bytes);
  size_t reserved_bytes() const;  // obtained from the driver and not released
  size_t idle_bytes() const;      // of those, in the cache waiting for reuse

 private:
  struct State;
  std::shared_ptr<State> state_;
};

// Pinned host memory for small host-to-device copies: the caller's data is copied here and the
// transfer is queued on the stream, so the caller may free its data at once and nothing waits.
class StagingRing {
 public:
  explicit StagingRing(size_t bytes = size_t{8} << 20);
  ~StagingRing();
  StagingRing(const StagingRing&) = delete;
  StagingRing& operator=(const StagingRing&) = delete;

  size_t capacity() const { return bytes_; }
  // Copies `n` bytes to the device at `dst` on `stream` through the ring (n ≤ capacity()).
  void copy_to_device(void* dst, const void* src, size_t n, void* stream);
  // Copies `n` bytes into the ring and returns where (256-byte aligned): pinned memory that kernels
  // on `stream` may read as it is (every GPU maps pinned host memory at its host address), until
  // the ring comes round to it again, which waits for the stream's work queued before.
  const void* stage(const void* src, size_t n, void* stream);

 private:
  std::byte* base_ = nullptr;
  size_t bytes_ = 0;
  size_t head_ = 0;
};

}  // namespace troupe::cuda
