// The GPU Communicator: NCCL collectives on the stream of a CUDA backend, so they run in order with
// the rank's kernels, and (the calls being asynchronous) are recorded into captured decode graphs.
// One process drives every GPU, a worker thread each; a group is made by every member calling
// make_nccl_communicator with the group's unique id at the same time, from its own thread.
#pragma once

#include <array>
#include <memory>
#include <string>

#include "engine/backend.hpp"
#include "engine/communicator.hpp"

namespace troupe {

// A group's rendezvous ticket (ncclUniqueId's bytes): made once, sent to every member.
using NcclUniqueId = std::array<char, 128>;

// Sets NCCL_NVLS_ENABLE=0 (NVLink multicast stays off on shared hosts) before NCCL first runs.
NcclUniqueId make_nccl_unique_id();

// Rank `rank` of `size` in the group of `id`, on `backend`'s device and stream (a CUDA backend).
// Blocks until every member has joined. The backend must outlive the communicator.
//
// Reductions take bf16 or f32; data movement (gathers, all-to-all, send/recv) moves any dtype's
// bytes. all_gather_counts synchronizes the stream (its result is read on the host).
std::unique_ptr<Communicator> make_nccl_communicator(const Backend& backend, const NcclUniqueId& id, int rank, int size);

// Aborts the NCCL communicator `comm` (made by make_nccl_communicator; false for any other): its
// pending and future operations fail instead of waiting for a peer that will never come. Callable
// from any thread; for a worker that fails mid-step, so that the others of its groups end the step
// with an error.
bool abort_nccl_communicator(Communicator& comm, const std::string& reason);

}  // namespace troupe
