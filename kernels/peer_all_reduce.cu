// The all-reduce of kernels/peer_all_reduce.hpp: one kernel per call, synchronised with the peers
// through flags in device memory (one-shot, two-shot) or through the data itself (push: see
// push_kernel below; what follows is the flag protocol).
//
// Work split. A message is P 16-byte packs (8 bf16 or 4 f32; the last pack is padded with zeros in
// the staging buffer). Every rank launches the same grid, and block b of every rank handles the same
// packs, so a flag exchange only has to pair block b of each rank with block b of its peers:
//   one-shot: block b takes packs b·T + t, stepping by blocks·T (T threads per block);
//   two-shot: segment q is packs [q·S, (q+1)·S), S = ⌈P/R⌉, and block b takes the same offsets j
//             inside every segment.
//
// Flag exchange `exchange(x)` of block b in call e (x = 0: inputs staged; x = 1, two-shot only:
// segment sums staged): after __syncthreads, thread q (q ≠ rank, q < R) stores e into
// flags_q[x][b][rank] with st.release.sys, then spins until flags_rank[x][b][q] ≥ e with
// ld.acquire.sys; a second __syncthreads hands that to the whole block. The block's staging writes
// precede the release (bar.sync orders them before it at CTA scope, and release is cumulative); the
// peer's reads follow its acquire, so they see the staged data. Remote reads use ld.global.cg (L2,
// where a GPU's memory is coherent for its peers).
//
// Buffer reuse. Call e uses staging buffer e mod 2 (e = the block's count of the calls it took part
// in, kept in device memory by the kernel itself, so graph replays count too; the same on every rank
// because every rank launches a call with the same grid; the flag protocol's calls launch every
// block, the push path only those its message needs). A rank overwrites buffer e mod 2 only in call
// e + 2, which starts after its call e + 1 has ended (stream order); that kernel's block saw
// exchange 0 of call e + 1 (or, pushed, the data) from every peer, so every peer had started call
// e + 1, hence ended call e, and reads nothing of call e any more. So no end-of-call barrier is
// needed: one flag exchange per one-shot call.
//
// Flag values. When block b of rank r waits for e, a peer's flag holds e − 1, e or e + 1 (the peer
// can finish call e and reach exchange 0 of call e + 1 before r reads, but not call e + 2, which
// needs r's signal of call e + 1); hence the wrap-safe "≥" test. The flags of exchange 1 never run
// ahead (a peer reaches exchange 1 of e + 1 only after r's exchange 0 of e + 1).
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/common.cuh"
#include "kernels/mailbox_packs.cuh"
#include "kernels/peer_all_reduce.hpp"

namespace troupe::cuda {
namespace {

using namespace packs;

constexpr int max_ranks = peer_all_reduce_max_ranks;
constexpr int threads = peer_all_reduce_threads;

struct Args {
  uint4* stage[max_ranks];      // rank q's two staging buffers, stage_packs each
  uint32_t* flags[max_ranks];   // rank q's flags: [2 exchanges][blocks][max_ranks senders]
  uint32_t* epochs;             // this rank's calls completed, per block
  uint4* mailbox[max_ranks];    // rank q's mailboxes (push path): [peer_mailbox_calls][R senders][mailbox_packs]
  size_t mailbox_packs;
  void* inout;
  void* residual;      // null: the sum goes to inout; else residual += the sum (rounded first), inout kept
  size_t n;            // elements
  size_t packs;        // ⌈n · element size / 16⌉
  size_t stage_packs;  // one staging buffer
  int rank;
  bool aligned;  // inout (and residual) 16-byte aligned: whole packs move with one access
};

// Pack `pack` of an n-element tensor at `base`; elements past n read as zero.
template <typename T>
__device__ __forceinline__ uint4 load_pack(const Args& a, const void* base, size_t pack) {
  constexpr int per_pack = Elem<T>::per_pack;
  using Bits = typename Elem<T>::Bits;
  const size_t first = pack * per_pack;
  if (a.aligned && first + per_pack <= a.n) return static_cast<const uint4*>(base)[pack];
  const Bits* src = static_cast<const Bits*>(base) + first;
  Bits e[per_pack];
#pragma unroll
  for (int j = 0; j < per_pack; ++j) e[j] = first + j < a.n ? src[j] : Bits{0};
  uint4 v;
  memcpy(&v, e, sizeof v);
  return v;
}

// Pack `pack` of the caller's tensor.
template <typename T>
__device__ __forceinline__ uint4 load_input(const Args& a, size_t pack) {
  return load_pack<T>(a, a.inout, pack);
}

// Pack `pack` of the result: the sum itself, or with a residual, residual + sum (the sum already
// rounded to T, as a separate add after the all-reduce would see it).
template <typename T>
__device__ __forceinline__ void store_output(const Args& a, size_t pack, const uint4& sum) {
  constexpr int per_pack = Elem<T>::per_pack;
  using Bits = typename Elem<T>::Bits;
  const size_t first = pack * per_pack;
  void* out = a.residual ? a.residual : a.inout;
  uint4 v = sum;
  if (a.residual) {
    const uint4 terms[2] = {load_pack<T>(a, a.residual, pack), sum};
    v = sum_in_order<T, 2>(terms);
  }
  if (a.aligned && first + per_pack <= a.n) {
    static_cast<uint4*>(out)[pack] = v;
    return;
  }
  Bits* dst = static_cast<Bits*>(out) + first;
  Bits e[per_pack];
  memcpy(e, &v, sizeof v);
#pragma unroll
  for (int j = 0; j < per_pack; ++j)
    if (first + j < a.n) dst[j] = e[j];
}

__device__ __forceinline__ uint4* staging(const Args& a, int rank, uint32_t epoch) {
  return a.stage[rank] + (epoch & 1u) * a.stage_packs;
}

// The sum over ranks of one pack, in rank order, in f32; `own` is this rank's contribution.
template <typename T, int R>
__device__ __forceinline__ uint4 sum_over_ranks(const Args& a, uint32_t epoch, size_t pack, const uint4& own) {
  uint4 v[R];
#pragma unroll
  for (int q = 0; q < R; ++q) v[q] = q == a.rank ? own : __ldcg(staging(a, q, epoch) + pack);
  return sum_in_order<T, R>(v);
}

__device__ __forceinline__ void store_release_sys(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ uint32_t load_acquire_sys(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Block b of this rank meets block b of every peer (see the top of the file).
template <int R>
__device__ __forceinline__ void exchange(const Args& a, int which, uint32_t epoch) {
  __syncthreads();
  const int peer = static_cast<int>(threadIdx.x);
  if (peer < R && peer != a.rank) {
    const size_t slot = (static_cast<size_t>(which) * gridDim.x + blockIdx.x) * max_ranks;
    store_release_sys(a.flags[peer] + slot + a.rank, epoch);
    const uint32_t* from_peer = a.flags[a.rank] + slot + peer;
    while (static_cast<int32_t>(load_acquire_sys(from_peer) - epoch) < 0) {
    }
  }
  __syncthreads();
}

// This call's number for this block. Every thread reads the counter here; thread 0 writes it back at
// the end, after at least one __syncthreads, so no thread can read the new value.
__device__ __forceinline__ uint32_t begin_call(const Args& a) { return a.epochs[blockIdx.x] + 1u; }
__device__ __forceinline__ void end_call(const Args& a, uint32_t epoch) {
  if (threadIdx.x == 0) a.epochs[blockIdx.x] = epoch;
}

// Both kernels are launched overlapped (common.cuh): a block waits for the kernel before it first,
// since every input (the message, the sequence counters) may come from it, and then lets the next
// kernel start, so that its CTAs load their weights while this one waits for the peers. That cannot
// keep this kernel's own blocks from being resident together (see create()): the next kernel is
// launched only once every block of this one has started.
__device__ __forceinline__ void begin_overlapped() {
  wait_for_previous_kernel();
  let_next_kernel_start();
}

template <typename T, int R>
__global__ void __launch_bounds__(threads) one_shot_kernel(Args a) {
  begin_overlapped();
  const uint32_t epoch = begin_call(a);
  uint4* mine = staging(a, a.rank, epoch);
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t start = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (size_t p = start; p < a.packs; p += stride) mine[p] = load_input<T>(a, p);
  exchange<R>(a, 0, epoch);
  for (size_t p = start; p < a.packs; p += stride)
    store_output<T>(a, p, sum_over_ranks<T, R>(a, epoch, p, load_input<T>(a, p)));
  end_call(a, epoch);
}

template <typename T, int R>
__global__ void __launch_bounds__(threads) two_shot_kernel(Args a) {
  begin_overlapped();
  const uint32_t epoch = begin_call(a);
  uint4* mine = staging(a, a.rank, epoch);
  const size_t segment = (a.packs + R - 1) / R;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t start = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;

  // Stage the packs that the peers sum (our own segment we read from `inout` below).
  for (size_t j = start; j < segment; j += stride) {
    uint4 v[R] = {};
#pragma unroll
    for (int q = 0; q < R; ++q)
      if (q != a.rank && q * segment + j < a.packs) v[q] = load_input<T>(a, q * segment + j);
#pragma unroll
    for (int q = 0; q < R; ++q)
      if (q != a.rank && q * segment + j < a.packs) mine[q * segment + j] = v[q];
  }
  exchange<R>(a, 0, epoch);

  // Reduce-scatter: sum our segment and stage the sum for the peers.
  for (size_t j = start; j < segment; j += stride) {
    const size_t p = a.rank * segment + j;
    if (p >= a.packs) break;
    const uint4 sum = sum_over_ranks<T, R>(a, epoch, p, load_input<T>(a, p));
    mine[p] = sum;
    store_output<T>(a, p, sum);
  }
  exchange<R>(a, 1, epoch);

  // All-gather: the other segments' sums from their owners.
  for (size_t j = start; j < segment; j += stride) {
    uint4 v[R] = {};
#pragma unroll
    for (int q = 0; q < R; ++q)
      if (q != a.rank && q * segment + j < a.packs) v[q] = __ldcg(staging(a, q, epoch) + q * segment + j);
#pragma unroll
    for (int q = 0; q < R; ++q)
      if (q != a.rank && q * segment + j < a.packs) store_output<T>(a, q * segment + j, v[q]);
  }
  end_call(a, epoch);
}

// The push path (bf16, messages of at most mailbox_bytes): a rank stores its packs straight into a
// mailbox of every peer, one slot per sender, and each rank reads its own mailbox until every slot
// holds data. The data is its own signal: the mailboxes hold -0.0 (bf16 0x8000) in every element
// while empty, and a sender writes a -0.0 of its message as +0.0 (which changes no sum, only the
// sign of an all-zero one). So a call costs one NVLink write on the critical path, where the pull
// path's flag exchange and remote reads cost a flag's write and then a read's round trip.
//
// Call e uses mailbox e mod 3 (e as in the flag protocol, the same on every rank). A reader empties
// each slot it has read, at once; a sender writes mailbox e mod 3 again only in call e + 3, which it
// starts after its call e + 2 has read this rank's data of call e + 2, sent after this rank's call e
// ended. Each thread sends and reads the same packs, so no thread waits for another of its block.
template <int R>
__global__ void __launch_bounds__(threads) push_kernel(Args a) {
  begin_overlapped();
  const uint32_t epoch = begin_call(a);
  const size_t call = epoch % peer_mailbox_calls;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t start = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  auto slot = [&](int owner, int sender) { return a.mailbox[owner] + (call * R + sender) * a.mailbox_packs; };
  for (size_t p = start; p < a.packs; p += stride) {
    const uint4 v = scrub(load_input<bf16>(a, p));
#pragma unroll
    for (int q = 0; q < R; ++q)
      if (q != a.rank) store_volatile(slot(q, a.rank) + p, v);
  }
  for (size_t p = start; p < a.packs; p += stride) {
    uint4 v[R];
#pragma unroll
    for (int q = 0; q < R; ++q) {
      if (q == a.rank) {
        v[q] = scrub(load_input<bf16>(a, p));
        continue;
      }
      v[q] = receive(slot(a.rank, q) + p);
    }
    store_output<bf16>(a, p, sum_in_order<bf16, R>(v));
  }
  // No exchange's barrier came before: without this one, thread 0 could count the call before a
  // late warp of its block had read the counter (begin_call).
  __syncthreads();
  end_call(a, epoch);
}

template <typename T, int R>
void launch(AllReduceAlgorithm algorithm, const Args& a, int blocks, cudaStream_t stream) {
  if constexpr (std::is_same_v<T, bf16>) {
    if (algorithm == AllReduceAlgorithm::push) {
      launch_overlapped<push_kernel<R>>(dim3(blocks), dim3(threads), 0, stream, a);
      TROUPE_CUDA_CHECK_LAUNCH(push_kernel);
      return;
    }
  }
  if (algorithm == AllReduceAlgorithm::two_shot) {
    launch_overlapped<two_shot_kernel<T, R>>(dim3(blocks), dim3(threads), 0, stream, a);
    TROUPE_CUDA_CHECK_LAUNCH(two_shot_kernel);
  } else {
    launch_overlapped<one_shot_kernel<T, R>>(dim3(blocks), dim3(threads), 0, stream, a);
    TROUPE_CUDA_CHECK_LAUNCH(one_shot_kernel);
  }
}

template <typename T>
void launch_for_ranks(int ranks, AllReduceAlgorithm algorithm, const Args& a, int blocks, cudaStream_t stream) {
  switch (ranks) {
    case 2: return launch<T, 2>(algorithm, a, blocks, stream);
    case 4: return launch<T, 4>(algorithm, a, blocks, stream);
    case 8: return launch<T, 8>(algorithm, a, blocks, stream);
    default: throw std::logic_error("peer all-reduce: no kernel for " + std::to_string(ranks) + " ranks");
  }
}

// Restores the calling thread's current device when it leaves scope.
class KeepCurrentDevice {
 public:
  KeepCurrentDevice() { TROUPE_CUDA_CHECK(cudaGetDevice(&device_)); }
  ~KeepCurrentDevice() { cudaSetDevice(device_); }
  KeepCurrentDevice(const KeepCurrentDevice&) = delete;
  KeepCurrentDevice& operator=(const KeepCurrentDevice&) = delete;

 private:
  int device_ = 0;
};

constexpr size_t round_up(size_t v, size_t to) { return (v + to - 1) / to * to; }

}  // namespace

std::shared_ptr<PeerAllReduceGroup> PeerAllReduceGroup::create(std::vector<int> devices, size_t max_bytes, int blocks) {
  const size_t ranks = devices.size();
  if (ranks != 2 && ranks != 4 && ranks != 8)
    throw std::invalid_argument("peer all-reduce: a group has 2, 4 or 8 GPUs, got " + std::to_string(ranks));
  if (max_bytes == 0) throw std::invalid_argument("peer all-reduce: max_bytes must be positive");
  if (blocks < 1) throw std::invalid_argument("peer all-reduce: blocks must be positive, got " + std::to_string(blocks));
  int count = 0;
  TROUPE_CUDA_CHECK(cudaGetDeviceCount(&count));
  for (size_t i = 0; i < ranks; ++i) {
    if (devices[i] < 0 || devices[i] >= count)
      throw std::invalid_argument("peer all-reduce: no CUDA device " + std::to_string(devices[i]) + " (" +
                                  std::to_string(count) + " visible)");
    for (size_t j = 0; j < i; ++j)
      if (devices[i] == devices[j])
        throw std::invalid_argument("peer all-reduce: device " + std::to_string(devices[i]) + " appears twice");
    // A block spins until its counterparts on the peers arrive. With no more blocks than
    // multiprocessors (each SM holds at least one block), all blocks of a call can be resident at
    // once, so none waits for a peer block that cannot start, whatever order blocks are scheduled in.
    int sms = 0;
    TROUPE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, devices[i]));
    if (blocks > sms)
      throw std::invalid_argument("peer all-reduce: " + std::to_string(blocks) + " blocks exceed the " +
                                  std::to_string(sms) + " multiprocessors of GPU " + std::to_string(devices[i]));
  }
  for (int from : devices)
    for (int to : devices) {
      if (from == to) continue;
      int can = 0;
      TROUPE_CUDA_CHECK(cudaDeviceCanAccessPeer(&can, from, to));
      if (!can)
        throw std::runtime_error("peer all-reduce: GPU " + std::to_string(from) + " cannot access the memory of GPU " +
                                 std::to_string(to) + " (cudaDeviceCanAccessPeer is false); use NCCL for this group");
    }
  std::shared_ptr<PeerAllReduceGroup> group(new PeerAllReduceGroup(std::move(devices), max_bytes, blocks));
  group->allocate();
  return group;
}

PeerAllReduceGroup::PeerAllReduceGroup(std::vector<int> devices, size_t max_bytes, int blocks)
    : devices_(std::move(devices)),
      max_bytes_(max_bytes),
      stage_bytes_(round_up(max_bytes, 256)),
      mailbox_bytes_(round_up(std::min(max_bytes, peer_all_reduce_push_bytes), 256)),
      gather_bytes_(round_up(std::min(max_bytes, peer_all_gather_bytes), 256)),
      blocks_(blocks) {}

void PeerAllReduceGroup::allocate() {
  KeepCurrentDevice keep;
  const size_t flag_bytes = size_t{2} * blocks_ * max_ranks * sizeof(uint32_t);
  const size_t epoch_bytes = blocks_ * sizeof(uint32_t);
  // flags, the all-reduce's epochs, the pushed all-reduce's count, all_gather_columns' epochs
  const size_t header_bytes = round_up(flag_bytes + 2 * epoch_bytes + sizeof(uint32_t), 256);
  memory_.reserve(devices_.size());
  for (int device : devices_) {
    TROUPE_CUDA_CHECK(cudaSetDevice(device));
    for (int peer : devices_) {
      if (peer == device) continue;
      const cudaError_t status = cudaDeviceEnablePeerAccess(peer, 0);
      if (status == cudaErrorPeerAccessAlreadyEnabled)
        cudaGetLastError();  // enabled earlier in this process (another group, NCCL): fine
      else
        TROUPE_CUDA_CHECK(status);
    }
    RankMemory m;
    // The push path's calls' mailboxes, the pushed all-reduce's two (engine/pushed_all_reduce.hpp), then
    // all_gather_columns' calls'.
    const size_t mailboxes =
        ((peer_mailbox_calls + 2) * mailbox_bytes_ + peer_mailbox_calls * gather_bytes_) * devices_.size();
    TROUPE_CUDA_CHECK(cudaMalloc(&m.base, header_bytes + 2 * stage_bytes_ + mailboxes));
    std::byte* base = static_cast<std::byte*>(m.base);
    m.flags = reinterpret_cast<uint32_t*>(base);
    m.epochs = reinterpret_cast<uint32_t*>(base + flag_bytes);
    m.pushed_state = reinterpret_cast<uint32_t*>(base + flag_bytes + epoch_bytes);
    m.gather_epochs = reinterpret_cast<uint32_t*>(base + flag_bytes + epoch_bytes + sizeof(uint32_t));
    m.stage = base + header_bytes;
    m.mailbox = base + header_bytes + 2 * stage_bytes_;
    m.pushed_mailbox = static_cast<std::byte*>(m.mailbox) + peer_mailbox_calls * devices_.size() * mailbox_bytes_;
    m.gather_mailbox = static_cast<std::byte*>(m.pushed_mailbox) + 2 * devices_.size() * mailbox_bytes_;
    memory_.push_back(m);  // freed by the destructor from here on
    TROUPE_CUDA_CHECK(cudaMemset(m.base, 0, header_bytes + 2 * stage_bytes_));
    // Empty mailboxes: every bf16 is -0.0 (see push_kernel).
    const std::vector<uint16_t> empty(mailboxes / 2, uint16_t{0x8000});
    TROUPE_CUDA_CHECK(cudaMemcpy(m.mailbox, empty.data(), mailboxes, cudaMemcpyHostToDevice));
  }
  // Every rank's flags must be zero before any peer's first call writes into them.
  for (int device : devices_) {
    TROUPE_CUDA_CHECK(cudaSetDevice(device));
    TROUPE_CUDA_CHECK(cudaDeviceSynchronize());
  }
}

PeerAllReduceGroup::~PeerAllReduceGroup() {
  int current = 0;
  cudaGetDevice(&current);
  for (size_t r = 0; r < memory_.size(); ++r) {
    cudaSetDevice(devices_[r]);
    cudaFree(memory_[r].base);
  }
  cudaSetDevice(current);
}

PeerAllReduce::PeerAllReduce(std::shared_ptr<PeerAllReduceGroup> group, int rank) : group_(std::move(group)), rank_(rank) {
  if (!group_) throw std::invalid_argument("peer all-reduce: no group");
  if (rank < 0 || rank >= group_->size())
    throw std::invalid_argument("peer all-reduce: rank " + std::to_string(rank) + " outside a group of " +
                                std::to_string(group_->size()));
}

PushedAllReduce PeerAllReduce::pushed() const {
  PushedAllReduce ar;
  for (int q = 0; q < size(); ++q) ar.mailboxes[q] = group_->memory_[q].pushed_mailbox;
  ar.state = group_->memory_[rank_].pushed_state;
  ar.slot_bytes = group_->mailbox_bytes_;
  ar.rank = rank_;
  ar.ranks = size();
  return ar;
}

void PeerAllReduce::all_reduce(void* inout, size_t n, DType dtype, cudaStream_t stream, AllReduceAlgorithm algorithm) {
  enqueue(inout, nullptr, n, dtype, stream, algorithm);
}

void PeerAllReduce::all_reduce_add(void* delta, void* residual, size_t n, DType dtype, cudaStream_t stream,
                                   AllReduceAlgorithm algorithm) {
  if (n > 0 && residual == nullptr) throw std::invalid_argument("peer all-reduce: residual is null");
  enqueue(delta, residual, n, dtype, stream, algorithm);
}

void PeerAllReduce::enqueue(void* inout, void* residual, size_t n, DType dtype, cudaStream_t stream,
                            AllReduceAlgorithm algorithm) {
  if (dtype != DType::bf16 && dtype != DType::f32)
    throw std::invalid_argument("peer all-reduce: sums BF16 or F32, got " + std::string(dtype_name(dtype)));
  const size_t bytes = n * dtype_size(dtype);
  if (bytes > group_->max_bytes_)
    throw std::invalid_argument("peer all-reduce: " + std::to_string(bytes) + " bytes exceed the group's max_bytes (" +
                                std::to_string(group_->max_bytes_) + ")");
  if (n == 0) return;
  if (inout == nullptr) throw std::invalid_argument("peer all-reduce: inout is null");

  const int ranks = group_->size();
  Args a{};
  for (int q = 0; q < ranks; ++q) {
    a.stage[q] = static_cast<uint4*>(group_->memory_[q].stage);
    a.flags[q] = group_->memory_[q].flags;
  }
  a.epochs = group_->memory_[rank_].epochs;
  a.inout = inout;
  a.residual = residual;
  a.n = n;
  a.packs = (bytes + 15) / 16;
  a.stage_packs = group_->stage_bytes_ / 16;
  a.rank = rank_;
  a.aligned = is_aligned(inout, 16) && (residual == nullptr || is_aligned(residual, 16));
  for (int q = 0; q < ranks; ++q) a.mailbox[q] = static_cast<uint4*>(group_->memory_[q].mailbox);
  a.mailbox_packs = group_->mailbox_bytes_ / 16;
  const bool pushable = dtype == DType::bf16 && bytes <= group_->mailbox_bytes_;
  if (algorithm == AllReduceAlgorithm::push && !pushable)
    throw std::invalid_argument("peer all-reduce: the push path takes bf16 messages of at most " +
                                std::to_string(group_->mailbox_bytes_) + " bytes");
  if (algorithm == AllReduceAlgorithm::automatic) {
    static const bool push_on = switched_on("TROUPE_PEER_PUSH");
    algorithm = pushable && push_on                                 ? AllReduceAlgorithm::push
                : bytes >= peer_all_reduce_two_shot_bytes(ranks) ? AllReduceAlgorithm::two_shot
                                                                  : AllReduceAlgorithm::one_shot;
  }

  // The push path launches only the blocks its packs need (a decode step's 8 KiB: one): a block's
  // sequence number counts the calls it took part in, the same on every rank, and each protocol's
  // reuse argument holds block by block (see the top of the file and push_kernel).
  int blocks = group_->blocks_;
  static const bool push_grid = switched_on("TROUPE_PEER_PUSH_GRID");
  if (algorithm == AllReduceAlgorithm::push && push_grid)
    blocks = static_cast<int>(std::min<size_t>(blocks, (a.packs + threads - 1) / threads));
  TROUPE_CUDA_CHECK(cudaSetDevice(group_->devices_[rank_]));
  if (dtype == DType::bf16)
    launch_for_ranks<bf16>(ranks, algorithm, a, blocks, stream);
  else
    launch_for_ranks<float>(ranks, algorithm, a, group_->blocks_, stream);
}

}  // namespace troupe::cuda
