// The GPU Communicator: NCCL collectives on the stream of a CUDA backend, so they run in order with
// the rank's kernels, and (the calls being asynchronous) are recorded into captured decode graphs.
// One process drives every GPU, a worker thread each; a group is made by every member calling
// make_nccl_communicator with the group's unique id at the same time, from its own thread.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend.hpp"
#include "engine/communicator.hpp"

namespace troupe {

namespace cuda {
class PeerAllReduceGroup;
}

// A group's rendezvous ticket (ncclUniqueId's bytes): made once, sent to every member.
using NcclUniqueId = std::array<char, 128>;

// Sets NCCL_NVLS_ENABLE=0 (NVLink multicast stays off on shared hosts) before NCCL first runs.
NcclUniqueId make_nccl_unique_id();

// The peer all-reduce (kernels/peer_all_reduce.hpp) for a group on `devices`, taking messages of up
// to peer_all_reduce_limit_bytes(size); null, with the reason in `why`, where the GPUs cannot map
// each other's memory or the group's size is not 2, 4 or 8.
std::shared_ptr<cuda::PeerAllReduceGroup> make_peer_all_reduce_group(const std::vector<int>& devices, std::string* why);

// All-reduces of at most this many bytes go through the peer all-reduce, larger ones through NCCL
// (measured on H100/H200 NVLink: docs/benchmarks.md, "all-reduce").
size_t peer_all_reduce_limit_bytes(int ranks);

// Rank `rank` of `size` in the group of `id`, on `backend`'s device and stream (a CUDA backend).
// Blocks until every member has joined. The backend must outlive the communicator. With `peer`
// (made for the same devices, in rank order), small all-reduces take the peer all-reduce, and
// gathers_columns' small gathers (a tensor-parallel LM head's logits) its all_gather_columns.
//
// Reductions take bf16 or f32; data movement (gathers, all-to-all, send/recv) moves any dtype's
// bytes. all_gather_counts synchronizes the stream (its result is read on the host).
std::unique_ptr<Communicator> make_nccl_communicator(const Backend& backend, const NcclUniqueId& id, int rank, int size,
                                                     std::shared_ptr<cuda::PeerAllReduceGroup> peer = nullptr);
}  // namespace troupe
