#include "engine/thread_communicator.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <numeric>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include "engine/cpu_backend.hpp"

namespace troupe {
namespace {

using Group = std::vector<std::unique_ptr<Communicator>>;

Tensor make(std::vector<int64_t> shape, DType dtype = DType::f32) {
  static const auto cpu = make_cpu_backend();
  return cpu->allocate(std::move(shape), dtype);
}

// Threads of one test. A test whose threads are still blocked long after they should have finished
// has hung; it ends the program with a message instead of stalling CI until the ctest timeout.
class Threads {
 public:
  ~Threads() { join_or_die(std::chrono::seconds(20)); }

  void spawn(std::function<void()> fn) {
    threads_.emplace_back([this, fn = std::move(fn)] {
      fn();
      std::lock_guard lock(mutex_);
      ++finished_;
      finished_cv_.notify_all();
    });
  }

  bool wait_for(std::chrono::seconds limit) {
    std::unique_lock lock(mutex_);
    return finished_cv_.wait_for(lock, limit, [&] { return finished_ == static_cast<int>(threads_.size()); });
  }

  void join_or_die(std::chrono::seconds limit) {
    if (!wait_for(limit)) {
      std::fprintf(stderr, "%s: threads still blocked after %lld s; the test hangs\n",
                   ::testing::UnitTest::GetInstance()->current_test_info()->name(),
                   static_cast<long long>(limit.count()));
      std::abort();
    }
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

 private:
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable finished_cv_;
  int finished_ = 0;
};

// Runs fn(comm) on one thread per rank and rethrows the first exception a rank threw. A rank that
// fails (throws, or returns early from a failed ASSERT) aborts the group, as a worker would, so the
// others stop waiting for it.
void run_ranks(Group& comms, const std::function<void(Communicator&)>& fn) {
  std::mutex m;
  std::exception_ptr first_error;
  {
    Threads threads;
    for (auto& comm : comms)
      threads.spawn([&, c = comm.get()] {
        bool threw = false;
        try {
          fn(*c);
        } catch (...) {
          threw = true;
          std::lock_guard lock(m);
          if (!first_error) first_error = std::current_exception();
        }
        if (threw || ::testing::Test::HasFatalFailure())
          abort_group(*c, "rank " + std::to_string(c->rank()) + " failed");
      });
    // Generous: on a loaded 2-core CI machine four ranks wait on each other's time slices.
    if (!threads.wait_for(std::chrono::seconds(120))) {
      ADD_FAILURE() << "ranks still running after 120 s; aborting the group";
      abort_group(*comms[0], "test watchdog");
    }
  }
  if (first_error) std::rethrow_exception(first_error);
}

// Values whose sums depend on the order of addition (magnitudes from 2^-12 to 2^12), so a reduction
// that is not in rank order gives other bits.
std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> mantissa(-1.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-12, 12);
  std::vector<float> v(n);
  for (float& x : v) x = std::ldexp(mantissa(gen), exponent(gen));
  return v;
}

void fill(const Tensor& t, const std::vector<float>& v) {
  ASSERT_EQ(static_cast<size_t>(t.numel()), v.size());
  if (!v.empty()) std::memcpy(t.data(), v.data(), v.size() * sizeof(float));
}

std::vector<float> contents(const Tensor& t) { return std::vector<float>(t.as<float>(), t.as<float>() + t.numel()); }

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

uint32_t seed_of(int size, int rank, int salt) { return static_cast<uint32_t>(1000 * salt + 10 * size + rank); }

class ThreadGroupTest : public ::testing::TestWithParam<int> {};

TEST_P(ThreadGroupTest, AllReduceIsTheRankOrderedSumBitIdenticalOnEveryRank) {
  int n = GetParam();
  // 2053 elements: chunks per rank of uneven length, some crossing the 1024-element summing block.
  for (std::vector<int64_t> shape : {std::vector<int64_t>{2053}, {7, 13}, {1}, {0, 5}}) {
    int64_t numel = std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
    std::vector<float> expect = random_floats(numel, seed_of(n, 0, 1));
    for (int q = 1; q < n; ++q) {
      auto v = random_floats(numel, seed_of(n, q, 1));
      for (int64_t i = 0; i < numel; ++i) expect[i] += v[i];
    }
    std::vector<std::vector<float>> got(n);
    auto comms = make_thread_group(n);
    run_ranks(comms, [&](Communicator& c) {
      Tensor t = make(shape);
      fill(t, random_floats(numel, seed_of(n, c.rank(), 1)));
      c.all_reduce(t);
      got[c.rank()] = contents(t);
    });
    for (int r = 0; r < n; ++r) EXPECT_TRUE(same_bits(got[r], expect)) << "rank " << r << " of " << n;
  }
}

TEST_P(ThreadGroupTest, AllGatherStacksUnequalRowsInRankOrder) {
  int n = GetParam();
  const int64_t width = 6;
  for (std::vector<int64_t> rows : {std::vector<int64_t>{3, 0, 5, 1}, {0, 0, 0, 0}, {0, 2, 0, 4}}) {
    rows.resize(n);
    int64_t sum = std::accumulate(rows.begin(), rows.end(), int64_t{0});
    auto value = [&](int rank, int64_t row, int64_t col) { return static_cast<float>(1000 * rank + 10 * row + col); };
    for (bool in_place : {false, true}) {
      auto comms = make_thread_group(n);
      run_ranks(comms, [&](Communicator& c) {
        int r = c.rank();
        int64_t offset = std::accumulate(rows.begin(), rows.begin() + r, int64_t{0});
        Tensor out = make({sum, width});
        Tensor in = in_place ? out.rows(offset, offset + rows[r]) : make({rows[r], width});
        for (int64_t i = 0; i < rows[r]; ++i)
          for (int64_t j = 0; j < width; ++j) in.as<float>()[i * width + j] = value(r, i, j);
        c.all_gather(in, out, rows);
        int64_t at = 0;
        for (int q = 0; q < n; ++q)
          for (int64_t i = 0; i < rows[q]; ++i, ++at)
            for (int64_t j = 0; j < width; ++j)
              ASSERT_EQ(out.as<float>()[at * width + j], value(q, i, j))
                  << "rank " << r << " row " << at << " in_place " << in_place;
      });
    }
  }
}

TEST_P(ThreadGroupTest, ReduceScatterKeepsEachRanksRowsOfTheSum) {
  int n = GetParam();
  const int64_t width = 5;
  std::vector<int64_t> rows = {2, 0, 3, 1};
  rows.resize(n);
  int64_t sum = std::accumulate(rows.begin(), rows.end(), int64_t{0});
  std::vector<float> total = random_floats(sum * width, seed_of(n, 0, 2));
  for (int q = 1; q < n; ++q) {
    auto v = random_floats(sum * width, seed_of(n, q, 2));
    for (size_t i = 0; i < v.size(); ++i) total[i] += v[i];
  }
  auto comms = make_thread_group(n);
  run_ranks(comms, [&](Communicator& c) {
    int r = c.rank();
    int64_t offset = std::accumulate(rows.begin(), rows.begin() + r, int64_t{0});
    Tensor in = make({sum, width});
    fill(in, random_floats(sum * width, seed_of(n, r, 2)));
    Tensor out = make({rows[r], width});
    c.reduce_scatter(in, out, rows);
    std::vector<float> expect(total.begin() + offset * width, total.begin() + (offset + rows[r]) * width);
    EXPECT_TRUE(same_bits(contents(out), expect)) << "rank " << r;

    // Reduce-scatter then all-gather is what all_reduce gives, to the bit (the MoE path of DP ranks
    // relies on this matching the all_reduce path).
    Tensor gathered = make({sum, width});
    c.all_gather(out, gathered, rows);
    c.all_reduce(in);
    EXPECT_TRUE(same_bits(contents(gathered), contents(in))) << "rank " << r;

    // In place: out is this rank's slice of in.
    fill(in, random_floats(sum * width, seed_of(n, r, 2)));
    c.reduce_scatter(in, in.rows(offset, offset + rows[r]), rows);
    EXPECT_TRUE(same_bits(contents(in.rows(offset, offset + rows[r])), expect)) << "rank " << r << " in place";
  });
}

// Row k that rank `from` sends to rank `to`, column j, as an exact integer.
int32_t a2a_value(int from, int to, int64_t k, int64_t j) { return 1000000 * from + 10000 * to + 10 * static_cast<int32_t>(k) + static_cast<int32_t>(j); }

template <class T>
void all_to_all_with(int n, DType dtype) {
  const int64_t width = 3;
  // counts[q][r]: rows rank q sends to rank r, at random with plenty of zeros.
  std::mt19937 gen(static_cast<uint32_t>(77 + n));
  std::uniform_int_distribution<int> pick(-2, 4);
  std::vector<std::vector<int64_t>> counts(n, std::vector<int64_t>(n));
  for (auto& row : counts)
    for (auto& x : row) x = std::max(0, pick(gen));
  counts[0][n - 1] = 0;
  for (int round = 0; round < 3; ++round) {
    auto comms = make_thread_group(n);
    run_ranks(comms, [&](Communicator& c) {
      int r = c.rank();
      const std::vector<int64_t>& send_rows = counts[r];
      // Exchanging the counts first, as a MoE dispatch does.
      std::vector<int64_t> all(n * n);
      c.all_gather_counts(send_rows, all);
      std::vector<int64_t> recv_rows(n);
      for (int q = 0; q < n; ++q) {
        for (int p = 0; p < n; ++p) ASSERT_EQ(all[q * n + p], counts[q][p]);
        recv_rows[q] = all[q * n + r];
      }
      int64_t sent = std::accumulate(send_rows.begin(), send_rows.end(), int64_t{0});
      int64_t received = std::accumulate(recv_rows.begin(), recv_rows.end(), int64_t{0});
      Tensor in = make({sent, width}, dtype), out = make({received, width}, dtype);
      int64_t at = 0;
      for (int to = 0; to < n; ++to)
        for (int64_t k = 0; k < send_rows[to]; ++k, ++at)
          for (int64_t j = 0; j < width; ++j) in.as<T>()[at * width + j] = static_cast<T>(a2a_value(r, to, k, j));
      c.all_to_all(in, send_rows, out, recv_rows);
      at = 0;
      for (int from = 0; from < n; ++from)
        for (int64_t k = 0; k < recv_rows[from]; ++k, ++at)
          for (int64_t j = 0; j < width; ++j)
            ASSERT_EQ(out.as<T>()[at * width + j], static_cast<T>(a2a_value(from, r, k, j)))
                << "rank " << r << " row " << at;
    });
    // Another matrix for the next round.
    for (auto& row : counts)
      for (auto& x : row) x = std::max(0, pick(gen));
  }
}

TEST_P(ThreadGroupTest, AllToAllPutsEveryRowWhereTheHeaderSays) {
  all_to_all_with<float>(GetParam(), DType::f32);
  all_to_all_with<int32_t>(GetParam(), DType::i32);
}

TEST_P(ThreadGroupTest, AllGatherCountsLaysOutRanksInOrder) {
  int n = GetParam();
  auto comms = make_thread_group(n);
  run_ranks(comms, [&](Communicator& c) {
    std::vector<int64_t> mine = {10 * c.rank(), 10 * c.rank() + 1, -c.rank()};
    std::vector<int64_t> all(3 * n, -99);
    c.all_gather_counts(mine, all);
    for (int q = 0; q < n; ++q) {
      EXPECT_EQ(all[3 * q], 10 * q);
      EXPECT_EQ(all[3 * q + 1], 10 * q + 1);
      EXPECT_EQ(all[3 * q + 2], -q);
    }
    std::vector<int64_t> none, all_none;
    c.all_gather_counts(none, all_none);  // zero counts is a valid, empty exchange
  });
}

TEST_P(ThreadGroupTest, SendRecvKeepsOrderAroundARing) {
  int n = GetParam();
  const int messages = 20;
  auto comms = make_thread_group(n);
  run_ranks(comms, [&](Communicator& c) {
    int r = c.rank(), next = (r + 1) % n, prev = (r + n - 1) % n;
    // All sends first: they must not wait for the receiver.
    for (int m = 0; m < messages; ++m) {
      Tensor t = make({m % 4 + 1}, DType::i32);
      for (int64_t i = 0; i < t.numel(); ++i) t.as<int32_t>()[i] = 1000 * r + 10 * m + static_cast<int32_t>(i);
      c.send(t, next);
    }
    for (int m = 0; m < messages; ++m) {
      Tensor t = make({m % 4 + 1}, DType::i32);
      c.recv(t, prev);
      for (int64_t i = 0; i < t.numel(); ++i)
        ASSERT_EQ(t.as<int32_t>()[i], 1000 * prev + 10 * m + i) << "rank " << r << " message " << m;
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Sizes, ThreadGroupTest, ::testing::Values(1, 2, 3, 4),
                         [](const auto& info) { return "size" + std::to_string(info.param); });

TEST(ThreadCommunicator, ManyMessagesInFlightBetweenOnePair) {
  auto comms = make_thread_group(2);
  const int messages = 500;
  run_ranks(comms, [&](Communicator& c) {
    if (c.rank() == 0) {
      for (int m = 0; m < messages; ++m) {
        Tensor t = make({m % 7}, DType::i64);  // includes empty messages
        for (int64_t i = 0; i < t.numel(); ++i) t.as<int64_t>()[i] = 100 * m + i;
        c.send(t, 1);
      }
    } else {
      for (int m = 0; m < messages; ++m) {
        Tensor t = make({m % 7}, DType::i64);
        c.recv(t, 0);
        for (int64_t i = 0; i < t.numel(); ++i) ASSERT_EQ(t.as<int64_t>()[i], 100 * m + i) << "message " << m;
      }
    }
    // To oneself, too (a pipeline of one stage may hand activations to itself).
    Tensor a = make({2}, DType::i32), b = make({2}, DType::i32);
    a.as<int32_t>()[0] = 7;
    a.as<int32_t>()[1] = c.rank();
    c.send(a, c.rank());
    c.recv(b, c.rank());
    EXPECT_EQ(b.as<int32_t>()[0], 7);
    EXPECT_EQ(b.as<int32_t>()[1], c.rank());
  });
}

TEST(ThreadCommunicator, Bf16MovesThroughGatherAllToAllAndSendRecvUnchanged) {
  // Bit patterns, including a NaN and a negative zero, that any conversion through f32 would alter
  // or that arithmetic would not preserve.
  auto pattern = [](int rank, int64_t i) { return static_cast<uint16_t>(0x7fc1 + 0x1111 * rank + 3 * i); };
  auto comms = make_thread_group(3);
  std::vector<int64_t> rows = {2, 0, 3};
  run_ranks(comms, [&](Communicator& c) {
    int r = c.rank();
    Tensor in = make({rows[r], 4}, DType::bf16), out = make({5, 4}, DType::bf16);
    for (int64_t i = 0; i < in.numel(); ++i) in.as<uint16_t>()[i] = pattern(r, i);
    c.all_gather(in, out, rows);
    int64_t at = 0;
    for (int q = 0; q < 3; ++q)
      for (int64_t i = 0; i < rows[q] * 4; ++i, ++at) ASSERT_EQ(out.as<uint16_t>()[at], pattern(q, i));

    // Each rank sends one row to every rank (itself included).
    Tensor send = make({3, 4}, DType::bf16), recv = make({3, 4}, DType::bf16);
    for (int64_t i = 0; i < 12; ++i) send.as<uint16_t>()[i] = pattern(r, 100 + i);
    std::vector<int64_t> ones = {1, 1, 1};
    c.all_to_all(send, ones, recv, ones);
    for (int q = 0; q < 3; ++q)
      for (int64_t j = 0; j < 4; ++j) ASSERT_EQ(recv.as<uint16_t>()[q * 4 + j], pattern(q, 100 + r * 4 + j));

    Tensor p = make({3}, DType::bf16), got = make({3}, DType::bf16);
    p.as<uint16_t>()[0] = 0x8000;  // -0
    p.as<uint16_t>()[1] = 0x7fc1;  // a NaN with payload
    p.as<uint16_t>()[2] = static_cast<uint16_t>(r);
    c.send(p, (r + 1) % 3);
    c.recv(got, (r + 2) % 3);
    EXPECT_EQ(got.as<uint16_t>()[0], 0x8000);
    EXPECT_EQ(got.as<uint16_t>()[1], 0x7fc1);
    EXPECT_EQ(got.as<uint16_t>()[2], (r + 2) % 3);
  });
}

// Mixed collectives back to back: a barrier that miscounts generations lets a fast rank into the next
// collective while a slow one still reads, which shows up here as wrong values (or under TSan).
TEST(ThreadCommunicator, ThousandMixedRoundsOnFourThreads) {
  const int n = 4, rounds = 1000;
  auto comms = make_thread_group(n);
  run_ranks(comms, [&](Communicator& c) {
    int r = c.rank();
    Tensor v = make({5});
    Tensor one = make({1}, DType::i32), got = make({1}, DType::i32);
    std::vector<int64_t> counts(n), all(n * n);
    for (int i = 0; i < rounds; ++i) {
      for (int64_t k = 0; k < 5; ++k) v.as<float>()[k] = static_cast<float>(r * i + k);
      c.all_reduce(v);
      for (int64_t k = 0; k < 5; ++k) ASSERT_EQ(v.as<float>()[k], static_cast<float>(6 * i + 4 * k)) << "round " << i;

      std::vector<int64_t> rows(n);
      for (int q = 0; q < n; ++q) rows[q] = (i + q) % 3;
      int64_t sum = std::accumulate(rows.begin(), rows.end(), int64_t{0});
      Tensor in = make({rows[r], 2}, DType::i32), out = make({sum, 2}, DType::i32);
      for (int64_t k = 0; k < in.numel(); ++k) in.as<int32_t>()[k] = 100 * r + static_cast<int32_t>(k) + i;
      c.all_gather(in, out, rows);
      int64_t at = 0;
      for (int q = 0; q < n; ++q)
        for (int64_t k = 0; k < rows[q] * 2; ++k, ++at)
          ASSERT_EQ(out.as<int32_t>()[at], 100 * q + k + i) << "round " << i;

      for (int q = 0; q < n; ++q) counts[q] = (i + r + 2 * q) % 3;
      c.all_gather_counts(counts, all);
      std::vector<int64_t> recv_rows(n);
      for (int q = 0; q < n; ++q) recv_rows[q] = all[q * n + r];
      Tensor s = make({std::accumulate(counts.begin(), counts.end(), int64_t{0})}, DType::i32);
      Tensor d = make({std::accumulate(recv_rows.begin(), recv_rows.end(), int64_t{0})}, DType::i32);
      for (int64_t k = 0; k < s.numel(); ++k) s.as<int32_t>()[k] = 10000 * r + i;
      c.all_to_all(s, counts, d, recv_rows);
      at = 0;
      for (int q = 0; q < n; ++q)
        for (int64_t k = 0; k < recv_rows[q]; ++k, ++at) ASSERT_EQ(d.as<int32_t>()[at], 10000 * q + i) << "round " << i;

      one.as<int32_t>()[0] = i * n + r;
      c.send(one, (r + 1) % n);
      c.recv(got, (r + n - 1) % n);
      ASSERT_EQ(got.as<int32_t>()[0], i * n + (r + n - 1) % n) << "round " << i;
    }
  });
}

// Runs fn on every rank and expects each to throw std::invalid_argument whose message contains
// every string of `parts`.
void expect_all_throw(Group& comms, const std::function<void(Communicator&)>& fn, std::vector<std::string> parts) {
  std::vector<std::string> messages(comms.size());
  run_ranks(comms, [&](Communicator& c) {
    try {
      fn(c);
      messages[c.rank()] = "(no exception)";
    } catch (const std::invalid_argument& e) {
      messages[c.rank()] = e.what();
    }
  });
  for (size_t r = 0; r < comms.size(); ++r)
    for (const auto& p : parts) EXPECT_NE(messages[r].find(p), std::string::npos) << "rank " << r << ": " << messages[r];
}

TEST(ThreadCommunicator, MismatchedArgumentsThrowOnEveryRankAndTheGroupGoesOn) {
  auto comms = make_thread_group(2);
  expect_all_throw(
      comms, [](Communicator& c) { c.all_reduce(make({4, c.rank() == 0 ? 8 : 9})); },
      {"all_reduce", "F32[4, 8]", "F32[4, 9]"});
  expect_all_throw(
      comms, [](Communicator& c) { c.all_reduce(make({4}, DType::bf16)); }, {"all_reduce", "BF16[4]", "f32"});
  expect_all_throw(
      comms,
      [](Communicator& c) {
        std::vector<int64_t> rows = {2, 2};
        c.all_gather(make({2, 3}), make({5, 3}), rows);  // out should have 4 rows
      },
      {"all_gather", "F32[2, 3]", "F32[5, 3]"});
  expect_all_throw(
      comms,
      [](Communicator& c) {
        std::vector<int64_t> rows = {1, 1};
        c.all_gather(make({1, c.rank() == 0 ? 3 : 4}), make({2, c.rank() == 0 ? 3 : 4}), rows);
      },
      {"all_gather", "F32[2, 3]", "F32[2, 4]"});
  expect_all_throw(
      comms,
      [](Communicator& c) {
        std::vector<int64_t> rows = {1, c.rank() == 0 ? 1 : 2};
        int64_t sum = rows[0] + rows[1];
        c.reduce_scatter(make({sum, 2}), make({rows[c.rank()], 2}), rows);
      },
      {"reduce_scatter", "rows [1, 1]", "[1, 2]"});
  expect_all_throw(
      comms,
      [](Communicator& c) {
        // Rank 0 sends 2 rows to rank 1, which expects 1.
        std::vector<int64_t> send = {1, c.rank() == 0 ? 2 : 1}, recv = {1, 1};
        c.all_to_all(make({send[0] + send[1], 2}), send, make({2, 2}), recv);
      },
      {"all_to_all", "rank 0 sends 2 rows to rank 1, which expects 1"});
  expect_all_throw(
      comms,
      [](Communicator& c) {
        float x[4] = {};
        c.all_reduce(Tensor(x, DType::f32, {4}, c.rank() == 1 ? Device::cuda : Device::cpu, nullptr));
      },
      {"all_reduce", "rank 1", "F32[4] on cuda"});
  expect_all_throw(
      comms,
      [](Communicator& c) {
        if (c.rank() == 0) {
          c.all_reduce(make({2}));
        } else {
          std::vector<int64_t> a = {1}, b(2);
          c.all_gather_counts(a, b);
        }
      },
      {"collective mismatch", "all_reduce", "all_gather_counts"});

  // After all that, the ranks are still in step.
  run_ranks(comms, [](Communicator& c) {
    Tensor t = make({3});
    for (int k = 0; k < 3; ++k) t.as<float>()[k] = static_cast<float>(c.rank() + k);
    c.all_reduce(t);
    EXPECT_EQ(t.as<float>()[0], 1.0f);
    EXPECT_EQ(t.as<float>()[2], 5.0f);
  });
}

TEST(ThreadCommunicator, RecvOfTheWrongSizeThrowsAndLeavesTheMessage) {
  auto comms = make_thread_group(2);
  Tensor sent = make({4});
  for (int k = 0; k < 4; ++k) sent.as<float>()[k] = static_cast<float>(k);
  comms[0]->send(sent, 1);
  Tensor small = make({3});
  try {
    comms[1]->recv(small, 0);
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("recv"), std::string::npos) << what;
    EXPECT_NE(what.find("F32[4]"), std::string::npos) << what;
    EXPECT_NE(what.find("F32[3]"), std::string::npos) << what;
  }
  Tensor right = make({2, 2}, DType::i32);  // byte size is what must match
  comms[1]->recv(right, 0);
  EXPECT_EQ(std::memcmp(right.data(), sent.data(), 16), 0);
  EXPECT_THROW(comms[0]->send(sent, 2), std::invalid_argument);
  EXPECT_THROW(make_thread_group(0), std::invalid_argument);
}

TEST(ThreadCommunicator, AbortWakesRanksBlockedInACollectiveAndInRecv) {
  auto comms = make_thread_group(3);
  std::vector<std::string> messages(2);
  Threads threads;
  for (int r = 0; r < 2; ++r)
    threads.spawn([&, r] {
      try {
        if (r == 0) {
          Tensor t = make({8});
          comms[0]->all_reduce(t);  // rank 2 never comes
        } else {
          Tensor t = make({8});
          comms[1]->recv(t, 2);  // nor sends
        }
        messages[r] = "(returned)";
      } catch (const std::runtime_error& e) {
        messages[r] = e.what();
      }
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_TRUE(abort_group(*comms[2], "worker 2 failed: out of cheese"));
  threads.join_or_die(std::chrono::seconds(10));
  for (int r = 0; r < 2; ++r) EXPECT_NE(messages[r].find("worker 2 failed: out of cheese"), std::string::npos) << messages[r];
  EXPECT_NE(messages[0].find("all_reduce"), std::string::npos) << messages[0];
  EXPECT_NE(messages[1].find("recv"), std::string::npos) << messages[1];

  // Later calls fail at once, and a second abort does not replace the first reason.
  EXPECT_TRUE(abort_group(*comms[0], "another reason"));
  Tensor t = make({8});
  try {
    comms[2]->all_gather_counts({}, {});
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("out of cheese"), std::string::npos) << e.what();
  }
  EXPECT_THROW(comms[2]->send(t, 0), std::runtime_error);
}

TEST(ThreadCommunicator, AbortGroupIgnoresOtherCommunicators) {
  struct Other final : Communicator {
    int rank() const override { return 0; }
    int size() const override { return 1; }
    void all_reduce(const Tensor&) override {}
    void all_gather(const Tensor&, const Tensor&, std::span<const int64_t>) override {}
    void reduce_scatter(const Tensor&, const Tensor&, std::span<const int64_t>) override {}
    void all_to_all(const Tensor&, std::span<const int64_t>, const Tensor&, std::span<const int64_t>) override {}
    void all_gather_counts(std::span<const int64_t>, std::span<int64_t>) override {}
    void send(const Tensor&, int) override {}
    void recv(const Tensor&, int) override {}
  } other;
  EXPECT_FALSE(abort_group(other, "nothing to abort"));
}

TEST(ThreadCommunicator, ADestroyedCommunicatorFailsCollectivesButItsSentMessagesArrive) {
  auto comms = make_thread_group(2);
  Tensor a = make({1}, DType::i32);
  a.as<int32_t>()[0] = 41;
  comms[1]->send(a, 0);
  a.as<int32_t>()[0] = 42;
  comms[1]->send(a, 0);

  std::string message;
  Threads blocked;
  blocked.spawn([&] {
    try {
      Tensor t = make({4});
      comms[0]->all_reduce(t);
      message = "(returned)";
    } catch (const std::runtime_error& e) {
      message = e.what();
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  comms[1].reset();
  blocked.join_or_die(std::chrono::seconds(10));
  EXPECT_NE(message.find("rank 1 left"), std::string::npos) << message;

  Tensor b = make({1}, DType::i32);
  comms[0]->recv(b, 1);
  EXPECT_EQ(b.as<int32_t>()[0], 41);
  comms[0]->recv(b, 1);
  EXPECT_EQ(b.as<int32_t>()[0], 42);
  EXPECT_THROW(comms[0]->recv(b, 1), std::runtime_error);
  EXPECT_THROW(comms[0]->send(b, 1), std::runtime_error);
}

}  // namespace
}  // namespace troupe
