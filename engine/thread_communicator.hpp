// The CPU backend's Communicator: the ranks of a group are threads of one process, so tensor,
// pipeline, data and expert parallelism run (and are tested) without a GPU. Collectives meet at a
// barrier and copy straight between the ranks' tensors; send/recv go through a queue per ordered
// pair of ranks, so send never waits for recv.
//
// Reductions add in rank order (rank 0 + rank 1 + …) for every element, so all ranks get the same
// bits, run after run, and reduce_scatter followed by all_gather gives exactly what all_reduce gives.
// all_reduce and reduce_scatter take f32; the data-movement ops (all_gather, all_to_all, send/recv)
// move the bytes of any dtype. Arguments that disagree across ranks (shapes, row counts, dtypes,
// different collectives) make every rank throw std::invalid_argument from the same call, and the
// group stays usable.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/communicator.hpp"

namespace troupe {

// One communicator per rank, sharing one group that lives as long as any of them. Rank i's object
// belongs to thread i; only abort_group may be called on it from elsewhere.
//
// Destroying a rank's communicator means it left: collectives of the others throw (they could never
// complete), and a recv from it throws once its queued messages are consumed.
std::vector<std::unique_ptr<Communicator>> make_thread_group(int size);

// Fails the group of `comm` (which must come from make_thread_group; returns false for any other
// communicator and does nothing): every rank blocked in a collective or recv wakes up, and their
// current and future calls throw std::runtime_error that carries `reason`. Safe from any thread;
// the first reason sticks. Meant for a worker that fails mid-step, so the other workers of its
// group end the step with an error instead of waiting for it forever.
bool abort_group(Communicator& comm, const std::string& reason);

}  // namespace troupe
