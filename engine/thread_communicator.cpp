#include "engine/thread_communicator.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace troupe {
namespace {

enum class Op : uint8_t { all_reduce, all_gather, reduce_scatter, all_to_all, all_gather_counts };

const char* op_name(Op op) {
  switch (op) {
    case Op::all_reduce: return "all_reduce";
    case Op::all_gather: return "all_gather";
    case Op::reduce_scatter: return "reduce_scatter";
    case Op::all_to_all: return "all_to_all";
    case Op::all_gather_counts: return "all_gather_counts";
  }
  return "?";
}

// What a rank brings to the collective it is in. It points into the caller's arguments, which stay
// alive because the caller is blocked until the closing barrier, after which nobody reads them.
struct Slot {
  Op op = Op::all_reduce;
  const Tensor* in = nullptr;  // all_reduce: inout
  const Tensor* out = nullptr;
  std::span<const int64_t> rows;       // all_gather/reduce_scatter: rows; all_to_all: send_rows;
                                       // all_gather_counts: mine
  std::span<const int64_t> recv_rows;  // all_to_all
  std::span<int64_t> counts_out;       // all_gather_counts: all
  std::string error;                   // what this rank found wrong with its own arguments
};

struct Message {
  std::vector<std::byte> bytes;
  std::string what;  // the sent tensor's description, for the error when sizes differ
};

struct Channel {
  std::mutex mutex;
  std::condition_variable ready;
  std::deque<Message> queue;
};

std::string shape_text(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::span<const int64_t> trailing(const Tensor& t) { return std::span(t.shape()).subspan(1); }

// Bytes of one index of dimension 0. Tensor::row_numel() is 0 for a tensor with zero rows, but a rank
// with no tokens still has a row width that must match the others'.
size_t row_bytes(const Tensor& t) {
  int64_t n = 1;
  for (int64_t s : trailing(t)) n *= s;
  return static_cast<size_t>(n) * dtype_size(t.dtype());
}

int64_t total(std::span<const int64_t> v) { return std::accumulate(v.begin(), v.end(), int64_t{0}); }

bool same(std::span<const int64_t> a, std::span<const int64_t> b) { return std::ranges::equal(a, b); }

// Throws nothing; the error text of the first thing wrong, or "".
std::string check_cpu(const Tensor& t, const char* name, bool need_f32, bool need_rows) {
  std::string what = std::string(name) + " " + t.describe();
  if (!t.defined()) return std::string(name) + " is undefined";
  if (t.device() != Device::cpu) return what + ": the thread communicator takes CPU tensors";
  if (need_f32 && t.dtype() != DType::f32) return what + ": only f32 is summed";
  if (need_rows && t.rank() < 1) return what + ": needs at least one dimension (rows)";
  if (t.numel() > 0 && t.data() == nullptr) return what + ": has no data";
  return "";
}

std::string check_rows(std::span<const int64_t> rows, int size, const char* name) {
  if (static_cast<int>(rows.size()) != size)
    return std::string(name) + " has " + std::to_string(rows.size()) + " entries for " + std::to_string(size) +
           " ranks";
  for (int64_t r : rows)
    if (r < 0) return std::string(name) + " " + shape_text(rows) + " has a negative count";
  return "";
}

void copy_bytes(void* dst, const void* src, size_t n) {
  // src == dst happens for an in-place all_gather (a rank's `in` is its slice of `out`); skipping it
  // also keeps a rank from writing bytes that others are reading at that moment.
  if (n != 0 && dst != src) std::memcpy(dst, src, n);
}

// dst[k] = src_0[k] + src_1[k] + … (this order, for bit-identical results on every rank) for each of
// the n elements and every dst. Summing through a private block lets a dst alias a src.
void sum_in_rank_order(std::span<const float* const> srcs, std::span<float* const> dsts, size_t n) {
  constexpr size_t block = 1024;
  float acc[block];
  for (size_t b = 0; b < n; b += block) {
    size_t m = std::min(block, n - b);
    std::copy_n(srcs[0] + b, m, acc);
    for (size_t q = 1; q < srcs.size(); ++q) {
      const float* s = srcs[q] + b;
      for (size_t k = 0; k < m; ++k) acc[k] += s[k];
    }
    for (float* d : dsts) std::copy_n(acc, m, d + b);
  }
}

class Group {
 public:
  explicit Group(int size)
      : size_(size), slots_(size), left_(size), channels_(static_cast<size_t>(size) * size) {}

  int size() const { return size_; }
  Slot& slot(int rank) { return slots_[rank]; }
  Channel& channel(int from, int to) { return channels_[static_cast<size_t>(from) * size_ + to]; }

  // Waits until every rank has arrived. The opening barrier of a collective gives up when the group
  // fails (some rank may never come); the closing one must not, because ranks that passed the
  // opening barrier are reading each other's tensors and will arrive without blocking on anything.
  void meet(bool give_up_on_failure, Op op, int rank) {
    std::unique_lock lock(mutex_);
    if (give_up_on_failure && collectives_failed()) throw std::runtime_error(failure_text(op, rank));
    uint64_t gen = generation_.load(std::memory_order_relaxed);
    if (++arrived_ == size_) {
      arrived_ = 0;
      generation_.store(gen + 1, std::memory_order_release);
      lock.unlock();
      met_.notify_all();
      return;
    }
    lock.unlock();
    // The others are usually a few microseconds behind; a short spin saves the futex round trip
    // without burning a core that another rank needs (yield, and only briefly).
    for (int i = 0; i < 64; ++i) {
      if (generation_.load(std::memory_order_acquire) != gen) return;
      std::this_thread::yield();
    }
    lock.lock();
    met_.wait(lock, [&] {
      return generation_.load(std::memory_order_relaxed) != gen || (give_up_on_failure && collectives_failed());
    });
    // A completed barrier wins over a failure: the others have gone on to read this rank's tensors.
    if (generation_.load(std::memory_order_relaxed) != gen) return;
    throw std::runtime_error(failure_text(op, rank));
  }

  void abort(const std::string& reason) {
    {
      std::lock_guard lock(mutex_);
      if (aborted_.load(std::memory_order_relaxed)) return;
      abort_reason_ = reason;
      aborted_.store(true, std::memory_order_release);
    }
    wake_everyone();
  }

  void leave(int rank) {
    {
      std::lock_guard lock(mutex_);
      if (first_left_ < 0) first_left_ = rank;
      left_[rank].store(true, std::memory_order_release);
    }
    wake_everyone();
  }

  bool aborted() const { return aborted_.load(std::memory_order_acquire); }
  bool has_left(int rank) const { return left_[rank].load(std::memory_order_acquire); }

  std::string abort_text(const std::string& what) {
    std::lock_guard lock(mutex_);
    return what + ": thread group aborted: " + abort_reason_;
  }

 private:
  bool collectives_failed() const { return aborted_.load(std::memory_order_relaxed) || first_left_ >= 0; }

  // Called with mutex_ held.
  std::string failure_text(Op op, int rank) const {
    std::string what = std::string(op_name(op)) + " on rank " + std::to_string(rank);
    if (aborted_.load(std::memory_order_relaxed)) return what + ": thread group aborted: " + abort_reason_;
    return what + ": rank " + std::to_string(first_left_) +
           " left the thread group (its communicator was destroyed), so the collective cannot complete";
  }

  void wake_everyone() {
    met_.notify_all();
    // Taking each channel's mutex orders the flag change before any recv's next look at it, so a recv
    // that saw the old state is already waiting when the notification comes.
    for (Channel& c : channels_) {
      { std::lock_guard lock(c.mutex); }
      c.ready.notify_all();
    }
  }

  const int size_;
  std::vector<Slot> slots_;  // slot r is written by rank r before the opening barrier only

  std::mutex mutex_;
  std::condition_variable met_;
  int arrived_ = 0;                       // guarded by mutex_
  std::atomic<uint64_t> generation_{0};   // changes under mutex_; read without it while spinning
  std::atomic<bool> aborted_{false};      // changes under mutex_
  std::string abort_reason_;              // guarded by mutex_, set once
  int first_left_ = -1;                   // guarded by mutex_
  std::vector<std::atomic<bool>> left_;   // changes under mutex_; read by recv without it

  std::vector<Channel> channels_;  // [from * size + to]
};

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(std::shared_ptr<Group> group, int rank) : group_(std::move(group)), rank_(rank) {}
  ~ThreadCommunicator() override { group_->leave(rank_); }

  int rank() const override { return rank_; }
  int size() const override { return group_->size(); }

  void abort(const std::string& reason) { group_->abort(reason); }

  void all_reduce(const Tensor& inout) override {
    Slot& s = publish(Op::all_reduce);
    s.in = &inout;
    s.error = check_cpu(inout, "inout", true, false);
    collective(
        [&] {
          const Tensor& first = *group_->slot(0).in;
          for (int q = 1; q < size(); ++q) {
            const Tensor& t = *group_->slot(q).in;
            if (t.shape() != first.shape())
              return "all_reduce: " + first.describe() + " on rank 0 but " + t.describe() + " on rank " +
                     std::to_string(q) + " (every rank passes the same shape)";
          }
          return std::string();
        },
        [&] {
          // Rank r sums elements [r n / size, (r + 1) n / size) of everyone's tensor and writes the sum
          // back into all of them: no element is touched by two ranks, and the work is split.
          size_t n = static_cast<size_t>(inout.numel());
          size_t begin = n * rank_ / size(), end = n * (rank_ + 1) / size();
          srcs_.clear();
          dsts_.clear();
          for (int q = 0; q < size(); ++q) {
            float* p = group_->slot(q).in->as<float>() + begin;
            srcs_.push_back(p);
            dsts_.push_back(p);
          }
          if (end > begin) sum_in_rank_order(srcs_, dsts_, end - begin);
        });
  }

  void all_gather(const Tensor& in, const Tensor& out, std::span<const int64_t> rows) override {
    Slot& s = publish(Op::all_gather);
    s.in = &in;
    s.out = &out;
    s.rows = rows;
    s.error = check_gather_like(in, rows, out, false);
    collective([&] { return check_same_rows_everywhere(Op::all_gather); },
               [&] {
                 size_t row = row_bytes(out);
                 auto* dst = static_cast<std::byte*>(out.data());
                 for (int q = 0; q < size(); ++q) {
                   copy_bytes(dst, group_->slot(q).in->data(), static_cast<size_t>(rows[q]) * row);
                   dst += static_cast<size_t>(rows[q]) * row;
                 }
               });
  }

  void reduce_scatter(const Tensor& in, const Tensor& out, std::span<const int64_t> rows) override {
    Slot& s = publish(Op::reduce_scatter);
    s.in = &in;
    s.out = &out;
    s.rows = rows;
    s.error = check_gather_like(out, rows, in, true);
    collective(
        [&] {
          std::string err = check_same_rows_everywhere(Op::reduce_scatter);
          if (!err.empty()) return err;
          const Tensor& first = *group_->slot(0).in;
          for (int q = 1; q < size(); ++q) {
            const Tensor& t = *group_->slot(q).in;
            if (t.shape() != first.shape())
              return "reduce_scatter: in is " + first.describe() + " on rank 0 but " + t.describe() + " on rank " +
                     std::to_string(q) + " (every rank passes the same shape)";
          }
          return std::string();
        },
        [&] {
          size_t row = static_cast<size_t>(row_bytes(in) / sizeof(float));
          size_t begin = static_cast<size_t>(total(rows.first(rank_))) * row;
          size_t n = static_cast<size_t>(rows[rank_]) * row;
          srcs_.clear();
          for (int q = 0; q < size(); ++q) srcs_.push_back(group_->slot(q).in->as<float>() + begin);
          dsts_.assign(1, out.as<float>());
          if (n > 0) sum_in_rank_order(srcs_, dsts_, n);
        });
  }

  void all_to_all(const Tensor& in, std::span<const int64_t> send_rows, const Tensor& out,
                  std::span<const int64_t> recv_rows) override {
    Slot& s = publish(Op::all_to_all);
    s.in = &in;
    s.out = &out;
    s.rows = send_rows;
    s.recv_rows = recv_rows;
    s.error = check_all_to_all(in, send_rows, out, recv_rows);
    collective(
        [&] {
          std::string err = check_same_row_type(Op::all_to_all);
          if (!err.empty()) return err;
          for (int r = 0; r < size(); ++r)
            for (int q = 0; q < size(); ++q) {
              int64_t expect = group_->slot(q).rows[r], got = group_->slot(r).recv_rows[q];
              if (expect != got)
                return "all_to_all: rank " + std::to_string(q) + " sends " + std::to_string(expect) +
                       " rows to rank " + std::to_string(r) + ", which expects " + std::to_string(got);
            }
          return std::string();
        },
        [&] {
          size_t row = row_bytes(out);
          auto* dst = static_cast<std::byte*>(out.data());
          for (int q = 0; q < size(); ++q) {
            const Slot& from = group_->slot(q);
            size_t offset = static_cast<size_t>(total(from.rows.first(rank_))) * row;
            size_t n = static_cast<size_t>(recv_rows[q]) * row;
            copy_bytes(dst, static_cast<const std::byte*>(from.in->data()) + offset, n);
            dst += n;
          }
        });
  }

  void all_gather_counts(std::span<const int64_t> mine, std::span<int64_t> all) override {
    Slot& s = publish(Op::all_gather_counts);
    s.rows = mine;
    s.counts_out = all;
    if (all.size() != mine.size() * size())
      s.error = "all has " + std::to_string(all.size()) + " entries for " + std::to_string(mine.size()) +
                " counts from each of " + std::to_string(size()) + " ranks";
    collective(
        [&] {
          for (int q = 1; q < size(); ++q)
            if (group_->slot(q).rows.size() != group_->slot(0).rows.size())
              return "all_gather_counts: rank 0 passes " + std::to_string(group_->slot(0).rows.size()) +
                     " counts but rank " + std::to_string(q) + " passes " +
                     std::to_string(group_->slot(q).rows.size());
          return std::string();
        },
        [&] {
          for (int q = 0; q < size(); ++q) std::ranges::copy(group_->slot(q).rows, all.begin() + q * mine.size());
        });
  }

  void send(const Tensor& t, int peer) override {
    check_p2p(t, peer, "send");
    if (group_->aborted()) throw std::runtime_error(group_->abort_text(p2p_what("send", peer)));
    if (group_->has_left(peer))
      throw std::runtime_error(p2p_what("send", peer) + ": rank " + std::to_string(peer) +
                               " left the thread group (its communicator was destroyed)");
    Message m;
    m.bytes.resize(t.nbytes());
    copy_bytes(m.bytes.data(), t.data(), t.nbytes());
    m.what = t.describe();
    Channel& c = group_->channel(rank_, peer);
    {
      std::lock_guard lock(c.mutex);
      c.queue.push_back(std::move(m));
    }
    c.ready.notify_all();
  }

  void recv(const Tensor& t, int peer) override {
    check_p2p(t, peer, "recv");
    Channel& c = group_->channel(peer, rank_);
    std::unique_lock lock(c.mutex);
    c.ready.wait(lock, [&] { return !c.queue.empty() || group_->aborted() || group_->has_left(peer); });
    if (group_->aborted()) {
      lock.unlock();
      throw std::runtime_error(group_->abort_text(p2p_what("recv", peer)));
    }
    // A rank that left may still have sent messages; those are delivered first.
    if (c.queue.empty())
      throw std::runtime_error(p2p_what("recv", peer) + ": rank " + std::to_string(peer) +
                               " left the thread group (its communicator was destroyed) with nothing more sent");
    Message& m = c.queue.front();
    if (m.bytes.size() != t.nbytes())  // left queued, so a retry with the right tensor still gets it
      throw std::invalid_argument(p2p_what("recv", peer) + ": the next message is " + m.what + " (" +
                                  std::to_string(m.bytes.size()) + " bytes) but the receiving tensor is " +
                                  t.describe() + " (" + std::to_string(t.nbytes()) + " bytes)");
    copy_bytes(t.data(), m.bytes.data(), m.bytes.size());
    c.queue.pop_front();
  }

 private:
  Slot& publish(Op op) {
    Slot& s = group_->slot(rank_);
    s = Slot{};
    s.op = op;
    return s;
  }

  // Every rank runs the same checks on the same published slots, so they all throw or all go on;
  // the closing barrier comes first either way, as others may still be reading this rank's slot.
  template <class Check, class Work>
  void collective(Check check, Work work) {
    Op op = group_->slot(rank_).op;
    group_->meet(true, op, rank_);
    std::string err = check_everyone(op);
    if (err.empty()) err = check();
    if (err.empty()) work();
    group_->meet(false, op, rank_);
    if (!err.empty()) throw std::invalid_argument(err);
  }

  std::string check_everyone(Op op) {
    for (int q = 0; q < size(); ++q) {
      const Slot& s = group_->slot(q);
      if (s.op != op)
        return std::string("collective mismatch: rank ") + std::to_string(rank_) + " called " + op_name(op) +
               " while rank " + std::to_string(q) + " called " + op_name(s.op);
    }
    for (int q = 0; q < size(); ++q)
      if (!group_->slot(q).error.empty())
        return std::string(op_name(op)) + " on rank " + std::to_string(q) + ": " + group_->slot(q).error;
    return "";
  }

  // all_gather (part = in, whole = out) and reduce_scatter (part = out, whole = in): the part holds
  // this rank's rows, the whole holds everyone's.
  std::string check_gather_like(const Tensor& part, std::span<const int64_t> rows, const Tensor& whole,
                                bool sum) const {
    bool gather = !sum;
    const char* part_name = gather ? "in" : "out";
    const char* whole_name = gather ? "out" : "in";
    std::string err = check_cpu(part, part_name, sum, true);
    if (err.empty()) err = check_cpu(whole, whole_name, sum, true);
    if (err.empty()) err = check_rows(rows, size(), "rows");
    if (!err.empty()) return err;
    std::string shapes = std::string(part_name) + " " + part.describe() + ", " + whole_name + " " +
                         whole.describe() + ", rows " + shape_text(rows);
    if (part.dtype() != whole.dtype()) return "dtypes differ: " + shapes;
    if (!same(trailing(part), trailing(whole))) return "row shapes differ: " + shapes;
    if (part.size(0) != rows[rank_])
      return std::string(part_name) + " must have rows[" + std::to_string(rank_) + "] rows: " + shapes;
    if (whole.size(0) != total(rows)) return std::string(whole_name) + " must have the sum of rows: " + shapes;
    return "";
  }

  std::string check_all_to_all(const Tensor& in, std::span<const int64_t> send_rows, const Tensor& out,
                               std::span<const int64_t> recv_rows) const {
    std::string err = check_cpu(in, "in", false, true);
    if (err.empty()) err = check_cpu(out, "out", false, true);
    if (err.empty()) err = check_rows(send_rows, size(), "send_rows");
    if (err.empty()) err = check_rows(recv_rows, size(), "recv_rows");
    if (!err.empty()) return err;
    std::string shapes = "in " + in.describe() + ", send_rows " + shape_text(send_rows) + ", out " +
                         out.describe() + ", recv_rows " + shape_text(recv_rows);
    if (in.dtype() != out.dtype()) return "dtypes differ: " + shapes;
    if (!same(trailing(in), trailing(out))) return "row shapes differ: " + shapes;
    if (in.size(0) != total(send_rows)) return "in must have the sum of send_rows: " + shapes;
    if (out.size(0) != total(recv_rows)) return "out must have the sum of recv_rows: " + shapes;
    return "";
  }

  // Bytes move between ranks row by row, so every rank's rows must have the same type and width.
  std::string check_same_row_type(Op op) const {
    const Tensor& first = *group_->slot(0).out;
    for (int q = 1; q < size(); ++q) {
      const Tensor& t = *group_->slot(q).out;
      if (t.dtype() != first.dtype() || !same(trailing(t), trailing(first)))
        return std::string(op_name(op)) + ": out is " + first.describe() + " on rank 0 but " + t.describe() +
               " on rank " + std::to_string(q) + " (rows must have the same dtype and shape)";
    }
    return "";
  }

  std::string check_same_rows_everywhere(Op op) const {
    std::string err = check_same_row_type(op);
    if (!err.empty()) return err;
    for (int q = 1; q < size(); ++q)
      if (!same(group_->slot(q).rows, group_->slot(0).rows))
        return std::string(op_name(op)) + ": rows " + shape_text(group_->slot(0).rows) + " on rank 0 but " +
               shape_text(group_->slot(q).rows) + " on rank " + std::to_string(q) +
               " (every rank passes the same rows)";
    return "";
  }

  std::string p2p_what(const char* op, int peer) const {
    bool sending = std::string_view(op) == "send";
    return std::string(op) + (sending ? " from rank " : " on rank ") + std::to_string(rank_) +
           (sending ? " to rank " : " from rank ") + std::to_string(peer);
  }

  // Point to point needs no agreement, so its argument errors are thrown right away.
  void check_p2p(const Tensor& t, int peer, const char* op) const {
    if (peer < 0 || peer >= size())
      throw std::invalid_argument(std::string(op) + " on rank " + std::to_string(rank_) + ": peer " +
                                  std::to_string(peer) + " is not in a group of " + std::to_string(size()));
    std::string err = check_cpu(t, "tensor", false, false);
    if (!err.empty()) throw std::invalid_argument(p2p_what(op, peer) + ": " + err);
  }

  std::shared_ptr<Group> group_;
  int rank_;
  std::vector<const float*> srcs_;  // reused so a step allocates nothing
  std::vector<float*> dsts_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> make_thread_group(int size) {
  if (size < 1) throw std::invalid_argument("make_thread_group: size " + std::to_string(size) + " is not positive");
  auto group = std::make_shared<Group>(size);
  std::vector<std::unique_ptr<Communicator>> comms;
  for (int r = 0; r < size; ++r) comms.push_back(std::make_unique<ThreadCommunicator>(group, r));
  return comms;
}

bool abort_group(Communicator& comm, const std::string& reason) {
  auto* c = dynamic_cast<ThreadCommunicator*>(&comm);
  if (c == nullptr) return false;
  c->abort(reason);
  return true;
}

}  // namespace troupe
