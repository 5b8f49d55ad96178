// A tensor-parallel all-reduce whose sending end is the projection that makes a rank's part of a
// sublayer's output: it writes every element into a mailbox of every peer as it computes it (push),
// and a small kernel after it sums this rank's part and the peers' mailboxes into the residual
// (gather). The message crosses NVLink while the projection's last warps still run, instead of
// after it, in a kernel that reads it back and sends it.
//
// (Gathering inside a GEMV instead, in every block of the next norm's projection or in the last
// block of the projection itself, was measured slower: docs/benchmarks.md.)
//
// The arithmetic is the peer all-reduce's all_reduce_add, bit for bit: the ranks' parts summed in
// rank order in f32 and rounded once, then added to the residual (a -0.0 travels as +0.0, see
// kernels/peer_all_reduce.cu). Which mailbox a call uses, and that it is empty, is kept in device
// memory (`state`), so calls may be captured into CUDA graphs and replayed; every rank of a group
// makes the same calls in the same order, as with any collective. The communicator that owns the
// mailboxes hands this out (Communicator::pushed_all_reduce); a backend whose kernels take part
// says so (Backend::pushes_output).
#pragma once

#include <cstddef>
#include <cstdint>

namespace troupe {

struct PushedAllReduce {
  static constexpr int max_ranks = 8;
  void* mailboxes[max_ranks] = {};  // rank q's mailboxes, on its device: [2 calls][ranks senders][slot_bytes]
  uint32_t* state = nullptr;        // this rank's: calls gathered
  size_t slot_bytes = 0;            // the largest message (bf16 elements × 2)
  int rank = 0;
  int ranks = 0;
};

}  // namespace troupe
