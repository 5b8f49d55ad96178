// All-reduce among the GPUs of one process through buffers that each GPU reads from its peers
// (cudaDeviceEnablePeerAccess, NVLink), for the small messages of tensor-parallel decode where
// NCCL's fixed cost dominates. One kernel per call: it copies the caller's tensor into this rank's
// staging buffer, synchronises with the peers through flags it writes into their memory, and sums.
//
//   one-shot: every rank reads every rank's staging buffer and sums the whole message.
//   two-shot: rank r sums only segment r (reduce-scatter), writes the sum back into its own staging
//             buffer, and after a second flag exchange every rank copies the other segments' sums
//             from their owners (all-gather). Less NVLink traffic per rank (2(R-1)/R instead of R-1
//             message sizes), one more synchronisation.
//   push:     (bf16, small messages) every rank writes its message into a mailbox of every peer and
//             sums its own mailbox once every slot has arrived; empty mailboxes hold -0.0, so the
//             data is its own signal (a -0.0 in a message travels as +0.0). One NVLink write on the
//             critical path, no flags.
//
// Sums are taken in rank order 0, 1, ..., R-1 in f32 (bf16 rounded once at the end), so every rank
// holds bit-identical results, equal to the sequential f32 sum rounded to the element type (the push
// path adds a -0.0 as +0.0, which changes only the sign of a sum of zeros).
//
// Like NCCL: every rank of a group calls all_reduce the same number of times, in the same order,
// with the same n, dtype and algorithm; a rank's calls are ordered on the GPU (one stream, or
// streams ordered by events), since each call's kernel takes its sequence number from the previous
// call's. Calls may be captured into CUDA graphs and replayed (no per-call host state: the kernel
// keeps its sequence numbers in device memory), as long as every rank replays the same calls. The
// kernel waits on the GPU for its peers, so all ranks' kernels must be able to run at the same time:
// drive the ranks from separate threads (or enqueue them all before waiting on any).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "engine/dtype.hpp"
#include "engine/pushed_all_reduce.hpp"

namespace troupe::cuda {

inline constexpr int peer_all_reduce_max_ranks = 8;
// Blocks of the all-reduce kernel on every rank (the same on all ranks, and fixed for a group: the
// per-block sequence numbers that pair up calls depend on it) and threads per block.
inline constexpr int peer_all_reduce_default_blocks = 36;
inline constexpr int peer_all_reduce_threads = 512;

enum class AllReduceAlgorithm { automatic, one_shot, two_shot, push };

// Under AllReduceAlgorithm::automatic, bf16 messages of at most this many bytes take the push path
// (see the top of the file); each rank keeps peer_mailbox_calls × ranks mailboxes of this size.
inline constexpr size_t peer_all_reduce_push_bytes = size_t{64} << 10;

// The push path and all_gather_columns each take turns over this many mailboxes a rank: call e uses
// mailbox e mod peer_mailbox_calls (why three are enough: kernels/peer_all_reduce.cu, push_kernel).
inline constexpr int peer_mailbox_calls = 3;

// The largest message (one rank's part, bytes) of all_gather_columns; each rank keeps
// peer_mailbox_calls × ranks mailboxes of this size for it. On 2 and 4 H200s the gather took 0.37–0.70
// of ncclAllGather's time at 16 KiB to this size (tools/all_reduce_bench, docs/benchmarks.md); larger
// parts were not measured.
inline constexpr size_t peer_all_gather_bytes = size_t{512} << 10;

// Under AllReduceAlgorithm::automatic, messages of at least this many bytes take the two-shot path.
// First guesses (two-shot's saving of NVLink bytes grows with the rank count; with 2 ranks both move
// one message size per rank); tools/all_reduce_bench measures the crossover.
constexpr size_t peer_all_reduce_two_shot_bytes(int ranks) {
  return ranks <= 2 ? size_t{1} << 20 : ranks <= 4 ? size_t{512} << 10 : size_t{256} << 10;
}

// The GPUs of one group and the device memory they share: per rank, two staging buffers of
// max_bytes (calls alternate between them, so that a rank never overwrites data a slower peer may
// still be reading from the previous call), flags and sequence counters, and the mailboxes of the
// push path, the pushed all-reduce and all_gather_columns. Freed when the last
// handle goes; by then no call may be in flight.
class PeerAllReduceGroup {
 public:
  // From any thread. `devices[r]` is rank r's CUDA device (2, 4 or 8 distinct devices). Enables peer
  // access between every pair; throws std::runtime_error naming the pair when cudaDeviceCanAccessPeer
  // is false for one (use NCCL for such a group), std::invalid_argument for a bad group or size, or
  // for more blocks than a GPU has multiprocessors. The calling thread's current device is unchanged.
  static std::shared_ptr<PeerAllReduceGroup> create(std::vector<int> devices, size_t max_bytes,
                                                    int blocks = peer_all_reduce_default_blocks);
  ~PeerAllReduceGroup();
  PeerAllReduceGroup(const PeerAllReduceGroup&) = delete;
  PeerAllReduceGroup& operator=(const PeerAllReduceGroup&) = delete;

  int size() const { return static_cast<int>(devices_.size()); }
  int device(int rank) const { return devices_.at(static_cast<size_t>(rank)); }
  size_t max_bytes() const { return max_bytes_; }
  size_t gather_bytes() const { return gather_bytes_; }
  int blocks() const { return blocks_; }

 private:
  friend class PeerAllReduce;
  // One cudaMalloc per rank on its device: flags, sequence counters, then the two staging buffers.
  struct RankMemory {
    void* base = nullptr;
    uint32_t* flags = nullptr;   // [2 exchanges][blocks][max ranks], written by the peers
    uint32_t* epochs = nullptr;  // [blocks]: calls completed, per block
    uint32_t* pushed_state = nullptr;  // the pushed all-reduce's call count (engine/pushed_all_reduce.hpp)
    void* stage = nullptr;       // [2][stage_bytes_]
    void* mailbox = nullptr;     // [peer_mailbox_calls][ranks senders][mailbox_bytes_], the push path's
    void* pushed_mailbox = nullptr;  // [2 calls][ranks senders][mailbox_bytes_], the pushed all-reduce's
    uint32_t* gather_epochs = nullptr;  // [blocks]: all_gather_columns calls completed, per block
    void* gather_mailbox = nullptr;     // [peer_mailbox_calls][ranks senders][gather_bytes_], all_gather_columns'
  };

  PeerAllReduceGroup(std::vector<int> devices, size_t max_bytes, int blocks);
  void allocate();

  std::vector<int> devices_;
  size_t max_bytes_;
  size_t stage_bytes_;  // max_bytes_ rounded up to 16-byte packs
  size_t mailbox_bytes_;  // the push path's largest message (peer_all_reduce_push_bytes or max_bytes_)
  size_t gather_bytes_;   // all_gather_columns' largest part (peer_all_gather_bytes or max_bytes_)
  int blocks_;
  std::vector<RankMemory> memory_;
};

// Rank `rank`'s side of a group. Use it from one thread at a time (rank r's worker).
class PeerAllReduce {
 public:
  PeerAllReduce(std::shared_ptr<PeerAllReduceGroup> group, int rank);

  int rank() const { return rank_; }
  int size() const { return group_->size(); }
  size_t max_bytes() const { return group_->max_bytes(); }

  // inout (n elements on this rank's device, bf16 or f32, any alignment; 16-byte aligned is fastest)
  // becomes the elementwise sum over the ranks, enqueued on `stream`. n · element size must not exceed
  // max_bytes(); n == 0 launches nothing. Makes this rank's device current on the calling thread, as
  // the CUDA backend's entry points do.
  void all_reduce(void* inout, size_t n, DType dtype, cudaStream_t stream,
                  AllReduceAlgorithm algorithm = AllReduceAlgorithm::automatic);
  // residual += the sum over the ranks of delta, the sum rounded to `dtype` before the add: what
  // all_reduce(delta) and then an elementwise add would give, bit for bit, in one kernel (the
  // residual stream of tensor-parallel decode). delta is left as it was.
  void all_reduce_add(void* delta, void* residual, size_t n, DType dtype, cudaStream_t stream,
                      AllReduceAlgorithm algorithm = AllReduceAlgorithm::automatic);
  // out (rows × width bf16) = every rank's `in` (rows × cols bf16) side by side in rank order: rank
  // q's row r at columns [q·cols, (q+1)·cols) of row r, cut at width (≤ ranks · cols): a
  // vocabulary-parallel LM head's logits, placed where an all-gather and a copy out of its stack
  // would put them, in one kernel. Every rank pushes its part into a mailbox of every peer, as the
  // push all-reduce does (a -0.0 arrives as +0.0, on every rank, the caller's own part included).
  // cols and width multiples of 8, both pointers 16-byte aligned, rows · cols · 2 ≤ gather_bytes();
  // every rank of the group calls it with the same rows, cols and width.
  void all_gather_columns(const void* in, void* out, size_t rows, size_t cols, size_t width, cudaStream_t stream);
  // Whether all_gather_columns takes these arguments (it throws std::invalid_argument where not).
  bool gathers_columns(const void* in, const void* out, size_t rows, size_t cols, size_t width) const;
  size_t gather_bytes() const { return group_->gather_bytes(); }
  // This rank's side of the group's pushed all-reduce (engine/pushed_all_reduce.hpp: bf16 messages of
  // at most peer_all_reduce_push_bytes, or max_bytes where smaller), whose mailboxes and call count
  // the group keeps apart from all_reduce's.
  PushedAllReduce pushed() const;

 private:
  void enqueue(void* inout, void* residual, size_t n, DType dtype, cudaStream_t stream, AllReduceAlgorithm algorithm);

  std::shared_ptr<PeerAllReduceGroup> group_;
  int rank_;
};

}  // namespace troupe::cuda
