#include "kernels/nccl_communicator.hpp"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "kernels/cuda_backend.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/peer_all_reduce.hpp"
#include "kernels/switches.hpp"

namespace troupe {
namespace {

void check(ncclResult_t result, const char* call, ncclComm_t comm = nullptr) {
  if (result == ncclSuccess) return;
  std::string what = std::string("NCCL ") + call + ": " + ncclGetErrorString(result);
  if (comm) {
    const char* last = ncclGetLastError(comm);
    if (last && *last) what += std::string(" (") + last + ")";
  }
  throw std::runtime_error(what);
}
#define TROUPE_NCCL_CHECK(call) check((call), #call, comm_)

void configure_nccl() {
  static std::once_flag once;
  // NVLink multicast objects are a shared resource of the host; the machines we run on are shared.
  std::call_once(once, [] {
    setenv("NCCL_NVLS_ENABLE", "0", 1);
    // Collectives connect at init rather than on first use (see NcclCommunicator::connect); a
    // setting in the environment wins.
    setenv("NCCL_RUNTIME_CONNECT", "0", 0);
    // Buffers of captured operations are registered with the peers at capture time, the host
    // waiting for them: pipeline stages capture one after another (the next only once this one's
    // step is done), so the first stage would wait forever.
    setenv("NCCL_GRAPH_REGISTER", "0", 0);
  });
}

ncclDataType_t reduction_type(const Tensor& t, const char* op) {
  switch (t.dtype()) {
    case DType::bf16: return ncclBfloat16;
    case DType::f32: return ncclFloat32;
    case DType::f16: return ncclFloat16;
    default: throw std::invalid_argument(std::string(op) + ": the NCCL communicator sums bf16, f16 or f32, got " + t.describe());
  }
}

size_t row_bytes(const Tensor& t) {
  int64_t n = 1;
  for (size_t d = 1; d < t.shape().size(); ++d) n *= t.shape()[d];
  return static_cast<size_t>(n) * dtype_size(t.dtype());
}

bool all_equal(std::span<const int64_t> v) {
  for (int64_t x : v)
    if (x != v.front()) return false;
  return true;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const Backend& backend, const NcclUniqueId& id, int rank, int size,
                   std::shared_ptr<cuda::PeerAllReduceGroup> peer)
      : rank_(rank), size_(size) {
    if (peer) {
      peer_ = std::make_unique<cuda::PeerAllReduce>(std::move(peer), rank);
      peer_limit_ = std::min(peer_->max_bytes(), peer_all_reduce_limit_bytes(size));
      pushed_ = peer_->pushed();
    }
    const CudaStream cs = cuda_stream_of(backend);
    device_ = cs.device;
    stream_ = reinterpret_cast<cudaStream_t>(cs.stream);
    TROUPE_CUDA_CHECK(cudaSetDevice(device_));
    ncclUniqueId uid;
    static_assert(sizeof(uid) == sizeof(NcclUniqueId));
    std::memcpy(&uid, id.data(), sizeof(uid));
    check(ncclCommInitRank(&comm_, size, uid, rank), "ncclCommInitRank");
    grow_counts(256);
    connect();
  }

  ~NcclCommunicator() override {
    cudaSetDevice(device_);
    if (counts_) cudaFree(counts_);
    // No ncclCommDestroy: with every rank of a group in one process, NCCL 2.28's destroy of the
    // last rank to get there waited forever for peers that had already left (seen on 4 × H200).
    // The communicator's memory stays until the process ends; a runtime lives as long as its
    // process, so only tests that build many runtimes pay for it.
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  bool takes_peer_all_reduce(const Tensor& t) const {
    return peer_ && t.nbytes() <= peer_limit_ && (t.dtype() == DType::bf16 || t.dtype() == DType::f32);
  }

  // The peer kernel adds into the residual as it stores the sum; NCCL's all-reduce cannot.
  bool fuses_all_reduce_add(const Tensor& delta) const override { return fuse_add_ && takes_peer_all_reduce(delta); }

  // Small bf16 sums of the residual stream go through the projections' pushes where the peer
  // all-reduce serves this group (TROUPE_PUSHED_ALL_REDUCE=0 keeps its kernel, to measure).
  const PushedAllReduce* pushed_all_reduce(const Tensor& delta) const override {
    const bool fits = delta.dtype() == DType::bf16 && delta.numel() % 8 == 0 && delta.nbytes() <= pushed_.slot_bytes;
    return push_sums_ && fuse_add_ && takes_peer_all_reduce(delta) && fits ? &pushed_ : nullptr;
  }

  void all_reduce_add(const Tensor& delta, const Tensor& residual) override {
    if (!fuses_all_reduce_add(delta) || residual.dtype() != delta.dtype() || residual.numel() != delta.numel())
      throw std::invalid_argument("all_reduce_add: " + delta.describe() + " into " + residual.describe() + " does not fuse here");
    peer_->all_reduce_add(delta.data(), residual.data(), static_cast<size_t>(delta.numel()), delta.dtype(), stream_);
  }

  void all_reduce(const Tensor& inout) override {
    if (takes_peer_all_reduce(inout)) {
      peer_->all_reduce(inout.data(), static_cast<size_t>(inout.numel()), inout.dtype(), stream_);
      return;
    }
    TROUPE_NCCL_CHECK(ncclAllReduce(inout.data(), inout.data(), inout.numel(), reduction_type(inout, "all_reduce"), ncclSum,
                                    comm_, stream_));
  }

  // Through the peers' mailboxes (kernels/peer_all_gather.cu) where the GPUs map each other: a
  // tensor-parallel LM head's logits (TROUPE_PEER_ALL_GATHER=0 keeps NCCL's all-gather and the copy
  // out of its stack, to measure).
  bool gathers_columns(const Tensor& in, const Tensor& out) const override {
    return peer_ && gather_columns_ && in.dtype() == DType::bf16 && out.dtype() == DType::bf16 && in.rank() == 2 &&
           out.rank() == 2 && in.size(0) == out.size(0) &&
           peer_->gathers_columns(in.data(), out.data(), static_cast<size_t>(in.size(0)),
                                  static_cast<size_t>(in.size(1)), static_cast<size_t>(out.size(1)));
  }

  void all_gather_columns(const Tensor& in, const Tensor& out) override {
    if (!gathers_columns(in, out))
      throw std::invalid_argument("all_gather_columns: " + in.describe() + " into " + out.describe() + " does not gather here");
    peer_->all_gather_columns(in.data(), out.data(), static_cast<size_t>(in.size(0)), static_cast<size_t>(in.size(1)),
                              static_cast<size_t>(out.size(1)), stream_);
  }

  void all_gather(const Tensor& in, const Tensor& out, std::span<const int64_t> rows) override {
    const size_t rb = row_bytes(in);
    if (all_equal(rows)) {
      TROUPE_NCCL_CHECK(ncclAllGather(in.data(), out.data(), rows.front() * rb, ncclChar, comm_, stream_));
      return;
    }
    // Uneven rows: each rank broadcasts its block to its place in `out`.
    TROUPE_NCCL_CHECK(ncclGroupStart());
    size_t offset = 0;
    for (int r = 0; r < size_; ++r) {
      if (rows[r] > 0)
        TROUPE_NCCL_CHECK(ncclBroadcast(in.data(), static_cast<char*>(out.data()) + offset, rows[r] * rb, ncclChar, r,
                                        comm_, stream_));
      offset += rows[r] * rb;
    }
    TROUPE_NCCL_CHECK(ncclGroupEnd());
  }

  void reduce_scatter(const Tensor& in, const Tensor& out, std::span<const int64_t> rows) override {
    const ncclDataType_t type = reduction_type(in, "reduce_scatter");
    const size_t rb = row_bytes(in), es = dtype_size(in.dtype());
    if (all_equal(rows)) {
      TROUPE_NCCL_CHECK(ncclReduceScatter(in.data(), out.data(), rows.front() * rb / es, type, ncclSum, comm_, stream_));
      return;
    }
    // Uneven rows: one reduction per rank, each rooted at the rank that keeps the block.
    TROUPE_NCCL_CHECK(ncclGroupStart());
    size_t offset = 0;
    for (int r = 0; r < size_; ++r) {
      if (rows[r] > 0)
        TROUPE_NCCL_CHECK(ncclReduce(static_cast<const char*>(in.data()) + offset, out.data(), rows[r] * rb / es, type,
                                     ncclSum, r, comm_, stream_));
      offset += rows[r] * rb;
    }
    TROUPE_NCCL_CHECK(ncclGroupEnd());
  }

  void all_to_all(const Tensor& in, std::span<const int64_t> send_rows, const Tensor& out,
                  std::span<const int64_t> recv_rows) override {
    const size_t rb = row_bytes(in);
    TROUPE_NCCL_CHECK(ncclGroupStart());
    size_t sent = 0, received = 0;
    for (int q = 0; q < size_; ++q) {
      if (send_rows[q] > 0)
        TROUPE_NCCL_CHECK(
            ncclSend(static_cast<const char*>(in.data()) + sent, send_rows[q] * rb, ncclChar, q, comm_, stream_));
      if (recv_rows[q] > 0)
        TROUPE_NCCL_CHECK(
            ncclRecv(static_cast<char*>(out.data()) + received, recv_rows[q] * rb, ncclChar, q, comm_, stream_));
      sent += send_rows[q] * rb;
      received += recv_rows[q] * rb;
    }
    TROUPE_NCCL_CHECK(ncclGroupEnd());
  }

  void all_gather_counts(std::span<const int64_t> mine, std::span<int64_t> all) override {
    const size_t n = mine.size();
    grow_counts(n * (size_ + 1));
    int64_t* send = counts_;
    int64_t* recv = counts_ + n;
    TROUPE_CUDA_CHECK(cudaSetDevice(device_));
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(send, mine.data(), n * sizeof(int64_t), cudaMemcpyHostToDevice, stream_));
    TROUPE_NCCL_CHECK(ncclAllGather(send, recv, n, ncclInt64, comm_, stream_));
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(all.data(), recv, n * size_ * sizeof(int64_t), cudaMemcpyDeviceToHost, stream_));
    TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void send(const Tensor& t, int peer) override {
    TROUPE_NCCL_CHECK(ncclSend(t.data(), t.nbytes(), ncclChar, peer, comm_, stream_));
  }

  void recv(const Tensor& t, int peer) override {
    TROUPE_NCCL_CHECK(ncclRecv(t.data(), t.nbytes(), ncclChar, peer, comm_, stream_));
  }

 private:
  // NCCL connects a pair of ranks on their first send/recv, and the host of each waits there until the
  // other arrives too: a pipeline stage's first send would wait for a receive that the next stage only
  // posts once this stage's step is done. So every pair connects now, while every member is here, and
  // one collective settles the rest (NCCL_RUNTIME_CONNECT=0 makes collectives connect at init).
  void connect() {
    TROUPE_NCCL_CHECK(ncclGroupStart());
    for (int q = 0; q < size_; ++q) {
      if (q == rank_) continue;
      TROUPE_NCCL_CHECK(ncclSend(counts_, 1, ncclInt64, q, comm_, stream_));
      TROUPE_NCCL_CHECK(ncclRecv(counts_ + 1 + q, 1, ncclInt64, q, comm_, stream_));
    }
    TROUPE_NCCL_CHECK(ncclGroupEnd());
    TROUPE_NCCL_CHECK(ncclAllReduce(counts_, counts_, 1, ncclInt64, ncclSum, comm_, stream_));
    TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void grow_counts(size_t n) {
    if (n <= counts_capacity_) return;
    TROUPE_CUDA_CHECK(cudaSetDevice(device_));
    if (counts_) TROUPE_CUDA_CHECK(cudaFree(counts_));
    counts_capacity_ = std::max<size_t>(n, 2 * counts_capacity_);
    TROUPE_CUDA_CHECK(cudaMalloc(&counts_, counts_capacity_ * sizeof(int64_t)));
  }

  int rank_, size_;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  ncclComm_t comm_ = nullptr;
  int64_t* counts_ = nullptr;  // device scratch of all_gather_counts
  size_t counts_capacity_ = 0;
  std::unique_ptr<cuda::PeerAllReduce> peer_;  // small all-reduces, where the GPUs map each other
  size_t peer_limit_ = 0;
  // TROUPE_ALL_REDUCE_ADD=0: the residual add stays a kernel of its own (to measure the fusion).
  bool fuse_add_ = cuda::switched_on("TROUPE_ALL_REDUCE_ADD");
  bool gather_columns_ = cuda::switched_on("TROUPE_PEER_ALL_GATHER");
  PushedAllReduce pushed_;  // peer_'s, where there is one
  bool push_sums_ = cuda::switched_on("TROUPE_PUSHED_ALL_REDUCE");
};

}  // namespace

NcclUniqueId make_nccl_unique_id() {
  configure_nccl();
  ncclUniqueId uid;
  check(ncclGetUniqueId(&uid), "ncclGetUniqueId");
  NcclUniqueId id;
  std::memcpy(id.data(), &uid, sizeof(uid));
  return id;
}

size_t peer_all_reduce_limit_bytes(int ranks) {
  // On 2 and 4 H200s the peer all-reduce took 0.55-0.84 of NCCL's time at every measured size up to
  // 4 MiB (docs/benchmarks.md); larger messages were not measured, so they stay with NCCL.
  (void)ranks;
  return size_t{4} << 20;
}

std::shared_ptr<cuda::PeerAllReduceGroup> make_peer_all_reduce_group(const std::vector<int>& devices, std::string* why) {
  try {
    return cuda::PeerAllReduceGroup::create(devices, peer_all_reduce_limit_bytes(static_cast<int>(devices.size())));
  } catch (const std::exception& e) {
    if (why) *why = e.what();
    return nullptr;
  }
}

std::unique_ptr<Communicator> make_nccl_communicator(const Backend& backend, const NcclUniqueId& id, int rank, int size,
                                                     std::shared_ptr<cuda::PeerAllReduceGroup> peer) {
  configure_nccl();
  return std::make_unique<NcclCommunicator>(backend, id, rank, size, std::move(peer));
}

}  // namespace troupe
