// The device side of a pushed all-reduce (engine/pushed_all_reduce.hpp), shared by the GEMV's
// sending end (kernels/gemv.cu) and the standalone kernels (kernels/pushed_all_reduce.cu).
//
// Call c (state[0], counted in device memory by the kernel that gathers it, the same on every rank)
// uses mailbox c mod 2 of every rank, one slot per sender, and its reader empties each pack as it
// reads it. A rank sends call c + 2 into the mailbox of call c only after its gather of call c + 1,
// which waited for this rank's data of call c + 1, sent after this rank's gather of call c had
// ended: two mailboxes are enough.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/pushed_all_reduce.hpp"
#include "kernels/mailbox_packs.cuh"

namespace troupe::cuda::pushed {

// Read after the kernel's wait for the one before it: the last gather's count is then visible.
__device__ __forceinline__ uint32_t current_call(const PushedAllReduce& ar) {
  return *static_cast<volatile const uint32_t*>(ar.state);
}

// Where `sender`'s part of call `call` lands in `owner`'s memory.
__device__ __forceinline__ std::byte* slot(const PushedAllReduce& ar, int owner, uint32_t call, int sender) {
  return static_cast<std::byte*>(ar.mailboxes[owner]) +
         ((call & 1u) * static_cast<size_t>(ar.ranks) + static_cast<size_t>(sender)) * ar.slot_bytes;
}

}  // namespace troupe::cuda::pushed
