// PeerAllReduce::all_gather_columns (kernels/peer_all_reduce.hpp): the push all-reduce's protocol
// (kernels/peer_all_reduce.cu, push_kernel) with the sum replaced by placing each rank's part at its
// columns. With a tensor-parallel LM head this is a batch-1 decode step's last collective: NCCL's
// all-gather and the copy out of its stack took ~17 µs of llama-3.1-8b's tp2 step on 4 × H200.
//
// Message: rows × cols bf16 per rank, P = rows · cols / 8 packs; block b of every rank handles the
// same packs (b·T + t, stepping by blocks·T), so block b of a rank only waits for block b of its
// peers. Call e of block b (e counted per block in device memory, so graph replays count too) uses
// mailbox e mod peer_mailbox_calls of every rank, one slot per sender; a reader empties each pack as it
// reads it, and the reuse argument is push_kernel's.
#include <stdexcept>
#include <string>

#include "kernels/common.cuh"
#include "kernels/mailbox_packs.cuh"
#include "kernels/peer_all_reduce.hpp"

namespace troupe::cuda {
namespace {

using namespace packs;

constexpr int kThreads = peer_all_reduce_threads;

struct GatherArgs {
  uint4* mailbox[peer_all_reduce_max_ranks];  // rank q's: [peer_mailbox_calls][R senders][mailbox_packs]
  size_t mailbox_packs;
  uint32_t* epochs;  // this rank's calls completed, per block
  const uint4* in;   // [rows][cols_packs]
  uint4* out;        // [rows][width_packs]
  size_t rows, cols_packs, width_packs;
  int rank;
};

template <int R>
__global__ void __launch_bounds__(kThreads) all_gather_columns_kernel(GatherArgs a) {
  wait_for_previous_kernel();
  let_next_kernel_start();
  const uint32_t epoch = a.epochs[blockIdx.x] + 1u;
  const size_t call = epoch % peer_mailbox_calls;
  const size_t packs = a.rows * a.cols_packs;
  const size_t stride = static_cast<size_t>(gridDim.x) * kThreads;
  const size_t start = static_cast<size_t>(blockIdx.x) * kThreads + threadIdx.x;
  auto slot = [&](int owner, int sender) { return a.mailbox[owner] + (call * R + sender) * a.mailbox_packs; };
  // Pack p of rank q's part, at its row and columns of the output (the last rank's columns past the
  // width are padding).
  auto place = [&](int q, size_t p, const uint4& v) {
    const size_t column = static_cast<size_t>(q) * a.cols_packs + p % a.cols_packs;
    if (column < a.width_packs) a.out[p / a.cols_packs * a.width_packs + column] = v;
  };
  for (size_t p = start; p < packs; p += stride) {
    const uint4 v = scrub(__ldcg(a.in + p));
#pragma unroll
    for (int q = 0; q < R; ++q)
      if (q != a.rank) store_volatile(slot(q, a.rank) + p, v);
    place(a.rank, p, v);
  }
  for (size_t p = start; p < packs; p += stride) {
    // First looks at every peer's pack together, so that their arrivals are waited for at once.
    uint4 v[R];
#pragma unroll
    for (int q = 0; q < R; ++q)
      if (q != a.rank) v[q] = load_volatile(slot(a.rank, q) + p);
#pragma unroll
    for (int q = 0; q < R; ++q)
      if (q != a.rank) place(q, p, receive(slot(a.rank, q) + p, v[q]));
  }
  // Every thread of the block has read this call's number before it is counted.
  __syncthreads();
  if (threadIdx.x == 0) a.epochs[blockIdx.x] = epoch;
}

template <int R>
void launch(const GatherArgs& a, int blocks, cudaStream_t stream) {
  launch_overlapped<all_gather_columns_kernel<R>>(dim3(blocks), dim3(kThreads), 0, stream, a);
  TROUPE_CUDA_CHECK_LAUNCH(all_gather_columns_kernel);
}

}  // namespace

bool PeerAllReduce::gathers_columns(const void* in, const void* out, size_t rows, size_t cols, size_t width) const {
  return cols % 8 == 0 && width % 8 == 0 && width <= cols * static_cast<size_t>(group_->size()) &&
         rows * cols * sizeof(bf16) <= group_->gather_bytes_ && is_aligned(in, 16) && is_aligned(out, 16);
}

void PeerAllReduce::all_gather_columns(const void* in, void* out, size_t rows, size_t cols, size_t width,
                                       cudaStream_t stream) {
  const int ranks = group_->size();
  if (!gathers_columns(in, out, rows, cols, width))
    throw std::invalid_argument("peer all-gather: " + std::to_string(rows) + " rows of " + std::to_string(cols) +
                                " bf16 into rows of " + std::to_string(width) +
                                " (multiples of 8, width at most ranks × cols, 16-byte aligned, at most " +
                                std::to_string(group_->gather_bytes_) + " bytes a rank)");
  if (rows == 0 || cols == 0) return;
  GatherArgs a{};
  for (int q = 0; q < ranks; ++q) a.mailbox[q] = static_cast<uint4*>(group_->memory_[q].gather_mailbox);
  a.mailbox_packs = group_->gather_bytes_ / 16;
  a.epochs = group_->memory_[rank_].gather_epochs;
  a.in = static_cast<const uint4*>(in);
  a.out = static_cast<uint4*>(out);
  a.rows = rows;
  a.cols_packs = cols / 8;
  a.width_packs = width / 8;
  a.rank = rank_;
  // Only the blocks the message needs (a batch-1 step's 128 KiB at tp2: 16), at most the group's,
  // which all fit on the GPU at once (PeerAllReduceGroup::create): a block spins for its peers'.
  const size_t packs = rows * a.cols_packs;
  const int blocks = static_cast<int>(std::min<size_t>(group_->blocks_, (packs + kThreads - 1) / kThreads));
  TROUPE_CUDA_CHECK(cudaSetDevice(group_->devices_[rank_]));
  switch (ranks) {
    case 2: return launch<2>(a, blocks, stream);
    case 4: return launch<4>(a, blocks, stream);
    case 8: return launch<8>(a, blocks, stream);
    default: throw std::logic_error("peer all-gather: no kernel for " + std::to_string(ranks) + " ranks");
  }
}

}  // namespace troupe::cuda
