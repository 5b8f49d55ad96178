// Collectives among the ranks of one group: a tensor-parallel group, the expert-parallel group of a
// pipeline stage, or two neighbouring pipeline stages. Every rank of a group calls the same
// collectives in the same order (a rank with no tokens still calls them, with zero rows). Tensors
// belong to the calling rank's backend and are row-major; "rows" are indices of dimension 0, and a
// row holds row_numel() elements. The CPU implementation joins threads of one process
// (thread_communicator.hpp); the NCCL one joins GPUs (kernels/).
#pragma once

#include <cstdint>
#include <span>
#include <stdexcept>

#include "engine/pushed_all_reduce.hpp"
#include "engine/tensor.hpp"

namespace troupe {

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // inout = Σ over ranks of inout, elementwise (same shape on every rank).
  virtual void all_reduce(const Tensor& inout) = 0;
  // residual += Σ over ranks of delta, the sum rounded to delta's dtype before the add (what
  // all_reduce(delta) and then the backend's add give), in one pass; delta is left as it was. Only
  // where fuses_all_reduce_add(delta) is true (the caller otherwise all-reduces and adds itself);
  // every rank of the group gives the same answer to that for the same tensor shape and dtype.
  virtual bool fuses_all_reduce_add(const Tensor& delta) const {
    (void)delta;
    return false;
  }
  virtual void all_reduce_add(const Tensor& delta, const Tensor& residual);
  // Where the sum of delta (this shape and dtype) may instead travel through mailboxes that the
  // backend's projection fills and its gather empties (engine/pushed_all_reduce.hpp): their
  // description, valid as long as this communicator; null where it may not. Every rank of the group
  // gives the same answer for the same tensor shape and dtype.
  virtual const PushedAllReduce* pushed_all_reduce(const Tensor& delta) const {
    (void)delta;
    return nullptr;
  }
  // out [rows, width] = the ranks' `in` [rows, cols] side by side in rank order (rank q's row r at
  // columns [q·cols, (q+1)·cols) of out's row r), cut at width ≤ size() · cols: a vocabulary-parallel
  // layer's output in one collective, without the stack all_gather makes and a copy out of it. Only
  // where gathers_columns(in, out) is true; every rank gives the same answer for the same shapes and
  // dtype.
  virtual bool gathers_columns(const Tensor& in, const Tensor& out) const {
    (void)in;
    (void)out;
    return false;
  }
  virtual void all_gather_columns(const Tensor& in, const Tensor& out);
  // out = the ranks' `in` stacked in rank order; rank r contributes rows[r] rows (every rank passes
  // the same `rows`); out has Σ rows rows.
  virtual void all_gather(const Tensor& in, const Tensor& out, std::span<const int64_t> rows) = 0;
  // The reverse: `in` (Σ rows rows, same on every rank) is summed over ranks, and rank r keeps the
  // rows[r] rows that start at rows[0] + … + rows[r-1], in `out`.
  virtual void reduce_scatter(const Tensor& in, const Tensor& out, std::span<const int64_t> rows) = 0;
  // Rank r sends send_rows[q] consecutive rows of `in` to each rank q, in rank order, and receives
  // recv_rows[q] rows from each rank q into `out`, in rank order. recv_rows[q] on rank r must equal
  // send_rows[r] on rank q.
  virtual void all_to_all(const Tensor& in, std::span<const int64_t> send_rows, const Tensor& out,
                          std::span<const int64_t> recv_rows) = 0;
  // Every rank's `mine` (same length n on all ranks) into all[r * n + i]: small host integers, such
  // as token counts before a variable-size collective.
  virtual void all_gather_counts(std::span<const int64_t> mine, std::span<int64_t> all) = 0;
  // Point to point, in order per (sender, receiver) pair; send may return before recv is called.
  virtual void send(const Tensor& t, int peer) = 0;
  virtual void recv(const Tensor& t, int peer) = 0;
};

inline void Communicator::all_reduce_add(const Tensor&, const Tensor&) {
  throw std::logic_error("Communicator::all_reduce_add: this communicator does not fuse the add (ask fuses_all_reduce_add)");
}

inline void Communicator::all_gather_columns(const Tensor&, const Tensor&) {
  throw std::logic_error("Communicator::all_gather_columns: this communicator does not gather columns (ask gathers_columns)");
}

}  // namespace troupe
