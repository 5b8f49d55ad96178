#include "kernels/nccl_communicator.hpp"

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "kernels/cuda_backend.hpp"
#include "kernels/cuda_check.hpp"

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

void disable_nvlink_multicast() {
  static std::once_flag once;
  // Multicast objects are a shared resource of the host; the machines we run on are shared.
  std::call_once(once, [] { setenv("NCCL_NVLS_ENABLE", "0", 1); });
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
  NcclCommunicator(const Backend& backend, const NcclUniqueId& id, int rank, int size) : rank_(rank), size_(size) {
    const CudaStream cs = cuda_stream_of(backend);
    device_ = cs.device;
    stream_ = reinterpret_cast<cudaStream_t>(cs.stream);
    TROUPE_CUDA_CHECK(cudaSetDevice(device_));
    ncclUniqueId uid;
    static_assert(sizeof(uid) == sizeof(NcclUniqueId));
    std::memcpy(&uid, id.data(), sizeof(uid));
    check(ncclCommInitRank(&comm_, size, uid, rank), "ncclCommInitRank");
    grow_counts(256);
  }

  ~NcclCommunicator() override {
    cudaSetDevice(device_);
    if (counts_) cudaFree(counts_);
    if (!aborted_.load()) ncclCommDestroy(comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_reduce(const Tensor& inout) override {
    live("all_reduce");
    TROUPE_NCCL_CHECK(ncclAllReduce(inout.data(), inout.data(), inout.numel(), reduction_type(inout, "all_reduce"), ncclSum,
                                    comm_, stream_));
  }

  void all_gather(const Tensor& in, const Tensor& out, std::span<const int64_t> rows) override {
    live("all_gather");
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
    live("reduce_scatter");
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
    live("all_to_all");
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
    live("all_gather_counts");
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
    live("send");
    TROUPE_NCCL_CHECK(ncclSend(t.data(), t.nbytes(), ncclChar, peer, comm_, stream_));
  }

  void recv(const Tensor& t, int peer) override {
    live("recv");
    TROUPE_NCCL_CHECK(ncclRecv(t.data(), t.nbytes(), ncclChar, peer, comm_, stream_));
  }

  void abort(const std::string& reason) {
    std::lock_guard lock(abort_mutex_);
    if (aborted_.exchange(true)) return;
    reason_ = reason;
    ncclCommAbort(comm_);
  }

 private:
  void live(const char* op) {
    if (aborted_.load()) {
      std::lock_guard lock(abort_mutex_);
      throw std::runtime_error(std::string(op) + ": the group was aborted: " + reason_);
    }
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
  std::atomic<bool> aborted_{false};
  std::mutex abort_mutex_;
  std::string reason_;
};

}  // namespace

NcclUniqueId make_nccl_unique_id() {
  disable_nvlink_multicast();
  ncclUniqueId uid;
  check(ncclGetUniqueId(&uid), "ncclGetUniqueId");
  NcclUniqueId id;
  std::memcpy(id.data(), &uid, sizeof(uid));
  return id;
}

std::unique_ptr<Communicator> make_nccl_communicator(const Backend& backend, const NcclUniqueId& id, int rank, int size) {
  disable_nvlink_multicast();
  return std::make_unique<NcclCommunicator>(backend, id, rank, size);
}

bool abort_nccl_communicator(Communicator& comm, const std::string& reason) {
  auto* nccl = dynamic_cast<NcclCommunicator*>(&comm);
  if (!nccl) return false;
  nccl->abort(reason);
  return true;
}

}  // namespace troupe
