// A Communicator that times each collective it forwards, by kind, so a worker can report how much
// of a step went to communication. On the CPU a collective's wall time is its cost; a GPU
// communicator's calls only enqueue work, so it is timed with events instead (kernels/).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <type_traits>

#include "engine/communicator.hpp"

namespace troupe {

enum class Collective : uint8_t { all_reduce, all_gather, reduce_scatter, all_to_all, send_recv };
inline constexpr size_t kNumCollectiveKinds = 5;

struct CollectiveTimes {
  std::array<double, kNumCollectiveKinds> seconds{};
  std::array<uint32_t, kNumCollectiveKinds> calls{};
  // The whole of the steps whose collectives were timed: the denominator of communication's share.
  double step_seconds = 0;
  uint32_t steps = 0;
  void add(Collective kind, double s) {
    seconds[static_cast<size_t>(kind)] += s;
    ++calls[static_cast<size_t>(kind)];
  }
  void add_step(double s) {
    step_seconds += s;
    ++steps;
  }
};

// Forwards every collective to `inner` through measure(kind, call), which runs the call and books
// its time however the subclass measures it (wall clock here, CUDA events in kernels/).
class MeasuredCommunicator : public Communicator {
 public:
  // `inner` must outlive this object.
  explicit MeasuredCommunicator(Communicator& inner) : inner_(inner) {}

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  void all_reduce(const Tensor& t) override {
    measure(Collective::all_reduce, [&] { inner_.all_reduce(t); });
  }
  bool fuses_all_reduce_add(const Tensor& delta) const override { return inner_.fuses_all_reduce_add(delta); }
  // A pushed all-reduce has no call of its own to time: it is the inner communicator's to give.
  const PushedAllReduce* pushed_all_reduce(const Tensor& delta) const override {
    return inner_.pushed_all_reduce(delta);
  }
  void all_reduce_add(const Tensor& delta, const Tensor& residual) override {
    measure(Collective::all_reduce, [&] { inner_.all_reduce_add(delta, residual); });
  }
  bool gathers_columns(const Tensor& in, const Tensor& out) const override { return inner_.gathers_columns(in, out); }
  void all_gather_columns(const Tensor& in, const Tensor& out) override {
    measure(Collective::all_gather, [&] { inner_.all_gather_columns(in, out); });
  }
  void all_gather(const Tensor& in, const Tensor& out, std::span<const int64_t> rows) override {
    measure(Collective::all_gather, [&] { inner_.all_gather(in, out, rows); });
  }
  void reduce_scatter(const Tensor& in, const Tensor& out, std::span<const int64_t> rows) override {
    measure(Collective::reduce_scatter, [&] { inner_.reduce_scatter(in, out, rows); });
  }
  void all_to_all(const Tensor& in, std::span<const int64_t> send_rows, const Tensor& out,
                  std::span<const int64_t> recv_rows) override {
    measure(Collective::all_to_all, [&] { inner_.all_to_all(in, send_rows, out, recv_rows); });
  }
  void all_gather_counts(std::span<const int64_t> mine, std::span<int64_t> all) override {
    inner_.all_gather_counts(mine, all);  // bookkeeping of the variable-size collectives, not data
  }
  void send(const Tensor& t, int peer) override {
    measure(Collective::send_recv, [&] { inner_.send(t, peer); });
  }
  void recv(const Tensor& t, int peer) override {
    measure(Collective::send_recv, [&] { inner_.recv(t, peer); });
  }

 protected:
  // The forwarded call, by reference: nothing is allocated on a step's path.
  class Call {
   public:
    template <class F>
      requires(!std::is_same_v<std::remove_cvref_t<F>, Call>)
    Call(F&& f) : f_(&f), run_([](void* p) { (*static_cast<std::remove_reference_t<F>*>(p))(); }) {}
    void operator()() const { run_(f_); }

   private:
    void* f_;
    void (*run_)(void*);
  };
  virtual void measure(Collective kind, Call call) = 0;

  Communicator& inner_;
};

class TimedCommunicator final : public MeasuredCommunicator {
 public:
  // `inner` must outlive this object; times accumulate into `times`.
  TimedCommunicator(Communicator& inner, CollectiveTimes& times) : MeasuredCommunicator(inner), times_(times) {}

 private:
  void measure(Collective kind, Call call) override {
    const auto start = std::chrono::steady_clock::now();
    call();
    times_.add(kind, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }

  CollectiveTimes& times_;
};

}  // namespace troupe
