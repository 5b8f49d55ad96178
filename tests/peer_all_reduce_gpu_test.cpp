// The peer all-reduce (kernels/peer_all_reduce.hpp) on every visible GPU (2, 4 or 8 of them) and on
// 2-GPU subgroups, one thread and one stream per rank as the workers drive it. Each rank's result
// must equal, bit for bit, the host's f32 sum of the ranks' inputs in rank order rounded once to the
// element type (so every rank holds the same bits). Inputs have random exponents and full mantissas,
// so a different summation order would change low bits. Bytes around the tensor must stay untouched.
//
//   SumsInRankOrder            1 element to max_bytes, odd sizes, bf16 and f32, each algorithm (the
//                              push path up to its mailbox size), aligned and misaligned tensors
//   BackToBackCalls            1000 calls without a host synchronisation, sizes, types and algorithms
//                              alternating, with random stalls on single ranks: a rank that reused a
//                              staging buffer or a flag too early would corrupt a result
//   DisjointGroupsAtOnce       (4+ GPUs) two 2-GPU groups running back-to-back calls concurrently
//   AddsIntoTheResidual        all_reduce_add: each rank's residual + the rounded sum, rounded again,
//                              bit for bit, delta unchanged, sizes, types, algorithms, misaligned,
//                              each call right after a plain all-reduce of other data
//   GraphReplays               a few calls captured into one CUDA graph per rank, replayed 100 times on
//                              new inputs, then plain calls again
//   GathersColumns             all_gather_columns: each rank's part at its columns of every rank's
//                              output, cut at the width, -0.0 arriving as +0.0, bytes after the output
//                              untouched; shapes from 8 columns to the mailbox's size (more packs than
//                              the grid's threads), back to back without a host synchronisation,
//                              plainly, then replayed in a CUDA graph, then plainly again
//
// A rank whose peers never arrive spins in its kernel forever; the watchdog turns such a hang into an
// abort with a message.
#include "kernels/peer_all_reduce.hpp"

#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "engine/dtype.hpp"
#include "kernels/cuda_backend.hpp"
#include "kernels/cuda_check.hpp"
#include "tests/all_reduce_watchdog.hpp"

namespace troupe::cuda {
namespace {

using Bytes = std::vector<std::byte>;
using Algorithm = AllReduceAlgorithm;

constexpr size_t max_bytes = size_t{4} << 20;
constexpr size_t guard_bytes = 256;
constexpr std::byte guard_value{0xA5};

const char* name(Algorithm a) {
  switch (a) {
    case Algorithm::automatic: return "automatic";
    case Algorithm::one_shot: return "one-shot";
    case Algorithm::two_shot: return "two-shot";
    case Algorithm::push: return "push";
  }
  return "?";
}

// Runs fn(rank) on one thread per rank and rethrows the first exception.
void on_every_rank(int ranks, const std::function<void(int)>& fn) {
  std::vector<std::exception_ptr> errors(static_cast<size_t>(ranks));
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r)
    threads.emplace_back([&, r] {
      try {
        fn(r);
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// n values of `dtype` (exactly representable), ±(1 + mantissa) · 2^e with e in [-6, 6]: sums of such
// values round differently in different orders.
Bytes make_input(DType dtype, size_t n, uint64_t seed) {
  Bytes out(n * dtype_size(dtype));
  for (size_t i = 0; i < n; ++i) {
    const uint64_t h = splitmix(seed * 0x100000001b3ull + i);
    const uint32_t sign = static_cast<uint32_t>(h >> 63) << 31;
    const uint32_t exponent = static_cast<uint32_t>(127 - 6 + (h >> 40) % 13) << 23;
    const uint32_t mantissa = static_cast<uint32_t>(h) & 0x7fffffu;
    if (dtype == DType::bf16) {
      const uint16_t v = static_cast<uint16_t>((sign | exponent | mantissa) >> 16);
      std::memcpy(out.data() + 2 * i, &v, 2);
    } else {
      const uint32_t v = sign | exponent | mantissa;
      std::memcpy(out.data() + 4 * i, &v, 4);
    }
  }
  return out;
}

float element(const Bytes& b, DType dtype, size_t i) {
  if (dtype == DType::bf16) {
    uint16_t v;
    std::memcpy(&v, b.data() + 2 * i, 2);
    return bf16_to_f32(v);
  }
  float v;
  std::memcpy(&v, b.data() + 4 * i, 4);
  return v;
}

// What every rank must hold: Σ inputs[r] for r = 0, 1, ... in f32, rounded once to dtype.
Bytes rank_order_sum(const std::vector<Bytes>& inputs, DType dtype) {
  const size_t n = inputs[0].size() / dtype_size(dtype);
  Bytes out(inputs[0].size());
  for (size_t i = 0; i < n; ++i) {
    float sum = element(inputs[0], dtype, i);
    for (size_t r = 1; r < inputs.size(); ++r) sum += element(inputs[r], dtype, i);
    if (dtype == DType::bf16) {
      const uint16_t v = f32_to_bf16(sum);
      std::memcpy(out.data() + 2 * i, &v, 2);
    } else {
      std::memcpy(out.data() + 4 * i, &sum, 4);
    }
  }
  return out;
}

// "" when equal, else the first differing element.
std::string first_difference(const std::byte* got, const Bytes& want, DType dtype) {
  if (std::memcmp(got, want.data(), want.size()) == 0) return "";
  const size_t size = dtype_size(dtype);
  for (size_t i = 0; i * size < want.size(); ++i)
    if (std::memcmp(got + i * size, want.data() + i * size, size) != 0) {
      const Bytes one(got + i * size, got + (i + 1) * size);
      return "element " + std::to_string(i) + " is " + std::to_string(element(one, dtype, 0)) + ", expected " +
             std::to_string(element(want, dtype, i));
    }
  return "";
}

std::vector<Bytes> inputs_of(int ranks, DType dtype, size_t n, uint64_t seed) {
  std::vector<Bytes> inputs;
  for (int r = 0; r < ranks; ++r) inputs.push_back(make_input(dtype, n, seed * 16 + static_cast<uint64_t>(r)));
  return inputs;
}

class DeviceBuffer {
 public:
  DeviceBuffer(int device, size_t bytes) : device_(device) {
    TROUPE_CUDA_CHECK(cudaSetDevice(device));
    TROUPE_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
  }
  ~DeviceBuffer() {
    cudaSetDevice(device_);
    cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  std::byte* get() const { return static_cast<std::byte*>(ptr_); }

 private:
  int device_;
  void* ptr_ = nullptr;
};

// A group, its per-rank handles and one non-blocking stream per rank.
struct Ranks {
  std::vector<int> devices;
  std::shared_ptr<PeerAllReduceGroup> group;
  std::vector<std::unique_ptr<PeerAllReduce>> handles;
  std::vector<cudaStream_t> streams;

  explicit Ranks(std::vector<int> devs) : devices(std::move(devs)) {
    group = PeerAllReduceGroup::create(devices, max_bytes);
    for (size_t r = 0; r < devices.size(); ++r) {
      handles.push_back(std::make_unique<PeerAllReduce>(group, static_cast<int>(r)));
      TROUPE_CUDA_CHECK(cudaSetDevice(devices[r]));
      cudaStream_t s;
      TROUPE_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
      streams.push_back(s);
    }
  }
  ~Ranks() {
    for (size_t r = 0; r < streams.size(); ++r) {
      cudaSetDevice(devices[r]);
      cudaStreamSynchronize(streams[r]);
      cudaStreamDestroy(streams[r]);
    }
  }
  int size() const { return static_cast<int>(devices.size()); }
  std::string describe() const {
    std::string s = "GPUs {";
    for (size_t r = 0; r < devices.size(); ++r) s += (r ? "," : "") + std::to_string(devices[r]);
    return s + "}";
  }
};

bool peer_access_everywhere(const std::vector<int>& devices) {
  for (int a : devices)
    for (int b : devices) {
      int can = 1;
      if (a != b) TROUPE_CUDA_CHECK(cudaDeviceCanAccessPeer(&can, a, b));
      if (!can) return false;
    }
  return true;
}

// All visible GPUs (the largest group size ≤ their count), then 2-GPU subgroups, one of them with
// rank 0 on a higher device than rank 1.
std::vector<std::vector<int>> test_groups() {
  const int count = cuda_device_count();
  const int all = count >= 8 ? 8 : count >= 4 ? 4 : 2;
  std::vector<std::vector<int>> groups;
  std::vector<int> first;
  for (int d = 0; d < all; ++d) first.push_back(d);
  groups.push_back(first);
  if (all > 2) groups.push_back({0, 1});
  groups.push_back({count - 1, 0});
  return groups;
}

class PeerAllReduceGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const int count = cuda_device_count();
    if (count == 0) GTEST_SKIP() << "no CUDA device: run on the GPU machine (tools/gpu_smoke.sh)";
    if (count < 2) GTEST_SKIP() << "the peer all-reduce needs at least 2 GPUs; this machine shows " << count;
    for (const auto& g : test_groups())
      if (!peer_access_everywhere(g)) {
        EXPECT_THROW(PeerAllReduceGroup::create(g, max_bytes), std::runtime_error);
        GTEST_SKIP() << "no peer access among these GPUs: the peer all-reduce refuses them (NCCL serves them)";
      }
  }
};

TEST_F(PeerAllReduceGpuTest, RejectsBadArguments) {
  const int count = cuda_device_count();
  EXPECT_THROW(PeerAllReduceGroup::create({0}, max_bytes), std::invalid_argument);
  EXPECT_THROW(PeerAllReduceGroup::create({0, 1, 0}, max_bytes), std::invalid_argument);
  EXPECT_THROW(PeerAllReduceGroup::create({0, 0}, max_bytes), std::invalid_argument);
  EXPECT_THROW(PeerAllReduceGroup::create({0, count}, max_bytes), std::invalid_argument);
  EXPECT_THROW(PeerAllReduceGroup::create({0, 1}, 0), std::invalid_argument);
  EXPECT_THROW(PeerAllReduceGroup::create({0, 1}, max_bytes, 0), std::invalid_argument);

  Ranks ranks({0, 1});
  EXPECT_THROW(PeerAllReduce beyond(ranks.group, 2), std::invalid_argument);
  DeviceBuffer buffer(0, max_bytes + 16);
  PeerAllReduce& rank0 = *ranks.handles[0];
  EXPECT_EQ(rank0.max_bytes(), max_bytes);
  EXPECT_THROW(rank0.all_reduce(buffer.get(), max_bytes / 2 + 1, DType::bf16, ranks.streams[0]), std::invalid_argument);
  EXPECT_THROW(rank0.all_reduce(buffer.get(), 16, DType::f16, ranks.streams[0]), std::invalid_argument);
  EXPECT_THROW(rank0.all_reduce(buffer.get(), 16, DType::f32, ranks.streams[0], Algorithm::push), std::invalid_argument);
  EXPECT_THROW(rank0.all_reduce(buffer.get(), peer_all_reduce_push_bytes / 2 + 1, DType::bf16, ranks.streams[0],
                                Algorithm::push),
               std::invalid_argument);
  // n == 0 launches nothing, so one rank alone may call it without waiting for its peer.
  rank0.all_reduce(buffer.get(), 0, DType::bf16, ranks.streams[0]);
  TROUPE_CUDA_CHECK(cudaStreamSynchronize(ranks.streams[0]));
}

// Every algorithm that takes n elements of dtype: the push path only bf16 up to its mailbox size.
std::vector<Algorithm> algorithms_for(DType dtype, size_t n) {
  std::vector<Algorithm> out = {Algorithm::automatic, Algorithm::one_shot, Algorithm::two_shot};
  if (dtype == DType::bf16 && n * 2 <= peer_all_reduce_push_bytes) out.push_back(Algorithm::push);
  return out;
}

// One call on every rank: inputs in, the sum and the guard bytes out.
struct Case {
  DType dtype;
  size_t n;
  Algorithm algorithm;
  size_t misalign;  // bytes past a 16-byte boundary (0 or one element)
};

// The guard bytes around a tensor of `bytes` at `offset` in `buffer` still hold guard_value.
void expect_guards_kept(const Bytes& buffer, size_t offset, size_t bytes, const std::string& what) {
  for (size_t i = 0; i < buffer.size(); ++i)
    if ((i < offset || i >= offset + bytes) && buffer[i] != guard_value) {
      ADD_FAILURE() << what << ": wrote outside the tensor, byte " << i;
      return;
    }
}

void check_case(Ranks& ranks, const std::vector<std::unique_ptr<DeviceBuffer>>& buffers, const Case& c, uint64_t seed) {
  const std::vector<Bytes> inputs = inputs_of(ranks.size(), c.dtype, c.n, seed);
  const Bytes want = rank_order_sum(inputs, c.dtype);
  const size_t bytes = c.n * dtype_size(c.dtype);
  const size_t total = guard_bytes + c.misalign + bytes + guard_bytes;
  std::vector<Bytes> got(static_cast<size_t>(ranks.size()), Bytes(total));
  on_every_rank(ranks.size(), [&](int r) {
    TROUPE_CUDA_CHECK(cudaSetDevice(ranks.devices[r]));
    const cudaStream_t s = ranks.streams[r];
    std::byte* base = buffers[r]->get();
    std::byte* tensor = base + guard_bytes + c.misalign;
    TROUPE_CUDA_CHECK(cudaMemsetAsync(base, static_cast<int>(guard_value), total, s));
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(tensor, inputs[r].data(), bytes, cudaMemcpyHostToDevice, s));
    ranks.handles[r]->all_reduce(tensor, c.n, c.dtype, s, c.algorithm);
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(got[r].data(), base, total, cudaMemcpyDeviceToHost, s));
    TROUPE_CUDA_CHECK(cudaStreamSynchronize(s));
  });
  const std::string what = ranks.describe() + " " + std::string(dtype_name(c.dtype)) + " n " + std::to_string(c.n) +
                           " " + name(c.algorithm) + (c.misalign ? " misaligned" : "");
  for (int r = 0; r < ranks.size(); ++r) {
    const Bytes& g = got[r];
    const std::string diff = first_difference(g.data() + guard_bytes + c.misalign, want, c.dtype);
    EXPECT_EQ(diff, "") << what << ", rank " << r;
    expect_guards_kept(g, guard_bytes + c.misalign, bytes, what + ", rank " + std::to_string(r));
  }
}

TEST_F(PeerAllReduceGpuTest, SumsInRankOrder) {
  test::AllReduceWatchdog watchdog(std::chrono::seconds(240));
  for (const auto& devices : test_groups()) {
    Ranks ranks(devices);
    std::vector<std::unique_ptr<DeviceBuffer>> buffers;
    for (int d : devices) buffers.push_back(std::make_unique<DeviceBuffer>(d, guard_bytes + 16 + max_bytes + guard_bytes));
    uint64_t seed = 1;
    for (DType dtype : {DType::bf16, DType::f32}) {
      const size_t max_n = max_bytes / dtype_size(dtype);
      const size_t threshold_n = peer_all_reduce_two_shot_bytes(ranks.size()) / dtype_size(dtype);
      std::vector<size_t> sizes = {1,     2,     3,     5,     7,      8,      9,      15,           16,
                                   17,    31,    63,    64,    65,     100,    255,    257,          1000,
                                   1023,  1025,  4095,  4097,  12345,  65535,  65537,  131071,       262147,
                                   524309, threshold_n - 1, threshold_n, max_n - 1, max_n};
      for (size_t n : sizes) {
        if (n == 0 || n > max_n) continue;
        for (Algorithm a : algorithms_for(dtype, n))
          check_case(ranks, buffers, {dtype, n, a, 0}, seed++);
      }
      for (size_t n : {size_t{1}, size_t{7}, size_t{1000}, size_t{4097}, size_t{65537}, size_t{262147}})
        for (Algorithm a : algorithms_for(dtype, n))
          if (a != Algorithm::automatic) check_case(ranks, buffers, {dtype, n, a, dtype_size(dtype)}, seed++);
    }
  }
}

// What all_reduce_add leaves in rank r's residual: residual + the rounded sum, rounded again.
Bytes residual_plus(const Bytes& residual, const Bytes& sum, DType dtype) {
  return rank_order_sum({residual, sum}, dtype);
}

// A plain all-reduce of other data, then all_reduce_add of `delta` into `residual`, on every rank
// without waiting in between; then the plain result, the residual, the untouched delta and the guard
// bytes around the residual are checked.
void check_add_case(Ranks& ranks, const Case& c, uint64_t seed) {
  const int n_ranks = ranks.size();
  const std::vector<Bytes> deltas = inputs_of(n_ranks, c.dtype, c.n, seed);
  const std::vector<Bytes> residuals = inputs_of(n_ranks, c.dtype, c.n, seed + 7777);
  const std::vector<Bytes> others = inputs_of(n_ranks, c.dtype, c.n, seed + 9999);
  const Bytes sum = rank_order_sum(deltas, c.dtype);
  const Bytes other_sum = rank_order_sum(others, c.dtype);
  const size_t bytes = c.n * dtype_size(c.dtype);
  const size_t total = guard_bytes + c.misalign + bytes + guard_bytes;
  std::vector<Bytes> got_residual(static_cast<size_t>(n_ranks), Bytes(total));
  std::vector<Bytes> got_delta(static_cast<size_t>(n_ranks), Bytes(bytes)), got_other(got_delta);
  on_every_rank(n_ranks, [&](int r) {
    TROUPE_CUDA_CHECK(cudaSetDevice(ranks.devices[r]));
    const cudaStream_t s = ranks.streams[r];
    DeviceBuffer residual_buffer(ranks.devices[r], total), delta_buffer(ranks.devices[r], bytes + 16),
        other_buffer(ranks.devices[r], bytes);
    std::byte* residual = residual_buffer.get() + guard_bytes + c.misalign;
    std::byte* delta = delta_buffer.get() + c.misalign;
    TROUPE_CUDA_CHECK(cudaMemsetAsync(residual_buffer.get(), static_cast<int>(guard_value), total, s));
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(residual, residuals[r].data(), bytes, cudaMemcpyHostToDevice, s));
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(delta, deltas[r].data(), bytes, cudaMemcpyHostToDevice, s));
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(other_buffer.get(), others[r].data(), bytes, cudaMemcpyHostToDevice, s));
    ranks.handles[r]->all_reduce(other_buffer.get(), c.n, c.dtype, s, c.algorithm);
    ranks.handles[r]->all_reduce_add(delta, residual, c.n, c.dtype, s, c.algorithm);
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(got_residual[r].data(), residual_buffer.get(), total, cudaMemcpyDeviceToHost, s));
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(got_delta[r].data(), delta, bytes, cudaMemcpyDeviceToHost, s));
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(got_other[r].data(), other_buffer.get(), bytes, cudaMemcpyDeviceToHost, s));
    TROUPE_CUDA_CHECK(cudaStreamSynchronize(s));
  });
  const std::string what = ranks.describe() + " all_reduce_add " + std::string(dtype_name(c.dtype)) + " n " +
                           std::to_string(c.n) + " " + name(c.algorithm) + (c.misalign ? " misaligned" : "");
  for (int r = 0; r < n_ranks; ++r) {
    const Bytes& g = got_residual[r];
    EXPECT_EQ(first_difference(g.data() + guard_bytes + c.misalign, residual_plus(residuals[r], sum, c.dtype), c.dtype), "")
        << what << ", rank " << r << ": residual";
    EXPECT_EQ(first_difference(got_delta[r].data(), deltas[r], c.dtype), "") << what << ", rank " << r << ": delta changed";
    EXPECT_EQ(first_difference(got_other[r].data(), other_sum, c.dtype), "") << what << ", rank " << r << ": plain call";
    expect_guards_kept(g, guard_bytes + c.misalign, bytes, what + ", rank " + std::to_string(r) + ", residual");
  }
}

TEST_F(PeerAllReduceGpuTest, AddsIntoTheResidual) {
  test::AllReduceWatchdog watchdog(std::chrono::seconds(240));
  for (const auto& devices : test_groups()) {
    Ranks ranks(devices);
    uint64_t seed = 50000;
    for (DType dtype : {DType::bf16, DType::f32}) {
      const size_t max_n = max_bytes / dtype_size(dtype);
      for (size_t n : {size_t{1}, size_t{7}, size_t{8}, size_t{4096}, size_t{4099}, size_t{65537}, size_t{300001}, max_n})
        for (Algorithm a : algorithms_for(dtype, n))
          for (size_t misalign : {size_t{0}, dtype_size(dtype)}) {
            if (n > max_n) continue;
            check_add_case(ranks, {dtype, n, a, misalign}, seed);
            seed += 100;
          }
    }
  }
}

// `calls` calls on every rank of `ranks`, enqueued without waiting, each on a fresh region of one
// large buffer, then checked. Rank-dependent stalls (host functions on the stream) let the other
// ranks run ahead into the next calls.
void back_to_back(Ranks& ranks, int calls, uint64_t seed) {
  const size_t max_bf16 = max_bytes / 2;
  const std::vector<Case> pattern = {
      {DType::bf16, 1, Algorithm::automatic, 0},           {DType::bf16, 4097, Algorithm::automatic, 0},
      {DType::f32, 300001, Algorithm::automatic, 0},       {DType::bf16, 37, Algorithm::two_shot, 0},
      {DType::bf16, max_bf16 / 8 + 5, Algorithm::automatic, 0}, {DType::f32, 1023, Algorithm::one_shot, 0},
      {DType::bf16, 100000, Algorithm::automatic, 0},      {DType::f32, 9, Algorithm::two_shot, 0},
      {DType::bf16, 65537, Algorithm::two_shot, 0},        {DType::bf16, 32768, Algorithm::push, 0},
      {DType::bf16, 5, Algorithm::push, 0},
  };
  constexpr int variants = 3;
  const int ranks_n = ranks.size();
  // inputs[p][v][r], want[p][v]
  std::vector<std::vector<std::vector<Bytes>>> inputs(pattern.size());
  std::vector<std::vector<Bytes>> want(pattern.size());
  for (size_t p = 0; p < pattern.size(); ++p)
    for (int v = 0; v < variants; ++v) {
      inputs[p].push_back(inputs_of(ranks_n, pattern[p].dtype, pattern[p].n, seed + p * variants + v));
      want[p].push_back(rank_order_sum(inputs[p].back(), pattern[p].dtype));
    }
  std::vector<size_t> offset(static_cast<size_t>(calls) + 1, 0);
  for (int i = 0; i < calls; ++i) {
    const Case& c = pattern[i % pattern.size()];
    offset[i + 1] = offset[i] + (c.n * dtype_size(c.dtype) + 255) / 256 * 256;
  }

  std::vector<std::string> failures(static_cast<size_t>(ranks_n));
  on_every_rank(ranks_n, [&](int r) {
    TROUPE_CUDA_CHECK(cudaSetDevice(ranks.devices[r]));
    const cudaStream_t s = ranks.streams[r];
    // This rank's inputs on the device, one copy per pattern entry and variant.
    std::vector<std::unique_ptr<DeviceBuffer>> sources;
    for (size_t p = 0; p < pattern.size(); ++p)
      for (int v = 0; v < variants; ++v) {
        const Bytes& in = inputs[p][v][r];
        sources.push_back(std::make_unique<DeviceBuffer>(ranks.devices[r], in.size()));
        TROUPE_CUDA_CHECK(cudaMemcpy(sources.back()->get(), in.data(), in.size(), cudaMemcpyHostToDevice));
      }
    DeviceBuffer results(ranks.devices[r], offset.back());
    for (int i = 0; i < calls; ++i) {
      const size_t p = i % pattern.size();
      const int v = static_cast<int>(i / pattern.size()) % variants;
      const Case& c = pattern[p];
      if ((i + 3 * r) % 13 == 0) {
        const auto stall = [](void* us) {
          std::this_thread::sleep_for(std::chrono::microseconds(reinterpret_cast<uintptr_t>(us)));
        };
        TROUPE_CUDA_CHECK(cudaLaunchHostFunc(s, stall, reinterpret_cast<void*>(uintptr_t{50} + 70 * r + i % 97)));
      }
      std::byte* region = results.get() + offset[i];
      TROUPE_CUDA_CHECK(cudaMemcpyAsync(region, sources[p * variants + v]->get(), c.n * dtype_size(c.dtype),
                                        cudaMemcpyDeviceToDevice, s));
      ranks.handles[r]->all_reduce(region, c.n, c.dtype, s, c.algorithm);
    }
    Bytes got(offset.back());
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(got.data(), results.get(), got.size(), cudaMemcpyDeviceToHost, s));
    TROUPE_CUDA_CHECK(cudaStreamSynchronize(s));
    for (int i = 0; i < calls && failures[r].empty(); ++i) {
      const size_t p = i % pattern.size();
      const int v = static_cast<int>(i / pattern.size()) % variants;
      const std::string diff = first_difference(got.data() + offset[i], want[p][v], pattern[p].dtype);
      if (!diff.empty())
        failures[r] = "call " + std::to_string(i) + " (" + std::string(dtype_name(pattern[p].dtype)) + " n " +
                      std::to_string(pattern[p].n) + " " + name(pattern[p].algorithm) + "): " + diff;
    }
  });
  for (int r = 0; r < ranks_n; ++r) EXPECT_EQ(failures[r], "") << ranks.describe() << ", rank " << r;
}

TEST_F(PeerAllReduceGpuTest, BackToBackCalls) {
  test::AllReduceWatchdog watchdog(std::chrono::seconds(120));
  uint64_t seed = 1000;
  for (const auto& devices : test_groups()) {
    Ranks ranks(devices);
    back_to_back(ranks, 1000, seed);
    seed += 1000;
  }
}

TEST_F(PeerAllReduceGpuTest, DisjointGroupsAtOnce) {
  if (cuda_device_count() < 4) GTEST_SKIP() << "needs 4 GPUs for two disjoint pairs";
  test::AllReduceWatchdog watchdog(std::chrono::seconds(120));
  Ranks a({0, 1}), b({2, 3});
  std::exception_ptr error_a, error_b;
  std::thread ta([&] {
    try {
      back_to_back(a, 300, 5000);
    } catch (...) {
      error_a = std::current_exception();
    }
  });
  std::thread tb([&] {
    try {
      back_to_back(b, 300, 6000);
    } catch (...) {
      error_b = std::current_exception();
    }
  });
  ta.join();
  tb.join();
  if (error_a) std::rethrow_exception(error_a);
  if (error_b) std::rethrow_exception(error_b);
}

// The calls `enqueue` makes on stream s, captured into a CUDA graph, ready to launch.
struct CapturedCalls {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CapturedCalls(cudaStream_t s, const std::function<void()>& enqueue) {
    TROUPE_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    enqueue();
    TROUPE_CUDA_CHECK(cudaStreamEndCapture(s, &graph));
    TROUPE_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  }
  ~CapturedCalls() {
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }
  CapturedCalls(const CapturedCalls&) = delete;
  CapturedCalls& operator=(const CapturedCalls&) = delete;
};

// Per rank: a graph of [copy input → tensor, all-reduce tensor] for each call of `calls`, replayed on
// new inputs; then the same calls without the graph, which must continue the kernels' sequence.
TEST_F(PeerAllReduceGpuTest, GraphReplays) {
  test::AllReduceWatchdog watchdog(std::chrono::seconds(240));
  const std::vector<Case> calls = {
      {DType::bf16, 4097, Algorithm::automatic, 0},
      {DType::f32, 100003, Algorithm::two_shot, 0},
      {DType::bf16, 65539, Algorithm::one_shot, 0},
      {DType::bf16, 300000, Algorithm::automatic, 0},
  };
  constexpr int replays = 100;
  for (const auto& devices : test_groups()) {
    Ranks ranks(devices);
    const int ranks_n = ranks.size();
    std::vector<std::string> failures(static_cast<size_t>(ranks_n));
    on_every_rank(ranks_n, [&](int r) {
      TROUPE_CUDA_CHECK(cudaSetDevice(ranks.devices[r]));
      const cudaStream_t s = ranks.streams[r];
      std::vector<std::unique_ptr<DeviceBuffer>> sources, tensors;
      for (const Case& c : calls) {
        sources.push_back(std::make_unique<DeviceBuffer>(ranks.devices[r], c.n * dtype_size(c.dtype)));
        tensors.push_back(std::make_unique<DeviceBuffer>(ranks.devices[r], c.n * dtype_size(c.dtype)));
      }
      const auto enqueue_calls = [&] {
        for (size_t k = 0; k < calls.size(); ++k) {
          const Case& c = calls[k];
          TROUPE_CUDA_CHECK(cudaMemcpyAsync(tensors[k]->get(), sources[k]->get(), c.n * dtype_size(c.dtype),
                                            cudaMemcpyDeviceToDevice, s));
          ranks.handles[r]->all_reduce(tensors[k]->get(), c.n, c.dtype, s, c.algorithm);
        }
      };
      const CapturedCalls captured(s, enqueue_calls);

      // Round `replays` runs the calls plainly; the rounds before replay the graph. Every rank runs
      // every round, failed or not: a rank that stopped early would leave its peers waiting.
      for (int round = 0; round <= replays; ++round) {
        std::vector<Bytes> want;
        for (size_t k = 0; k < calls.size(); ++k) {
          const Case& c = calls[k];
          const std::vector<Bytes> inputs =
              inputs_of(ranks_n, c.dtype, c.n, 100000 + static_cast<uint64_t>(round) * 16 + k);
          want.push_back(rank_order_sum(inputs, c.dtype));
          TROUPE_CUDA_CHECK(cudaMemcpyAsync(sources[k]->get(), inputs[r].data(), inputs[r].size(),
                                            cudaMemcpyHostToDevice, s));
        }
        if (round < replays)
          TROUPE_CUDA_CHECK(cudaGraphLaunch(captured.exec, s));
        else
          enqueue_calls();
        std::vector<Bytes> got;
        for (size_t k = 0; k < calls.size(); ++k) {
          got.emplace_back(want[k].size());
          TROUPE_CUDA_CHECK(
              cudaMemcpyAsync(got[k].data(), tensors[k]->get(), got[k].size(), cudaMemcpyDeviceToHost, s));
        }
        TROUPE_CUDA_CHECK(cudaStreamSynchronize(s));
        for (size_t k = 0; k < calls.size() && failures[r].empty(); ++k) {
          const std::string diff = first_difference(got[k].data(), want[k], calls[k].dtype);
          if (!diff.empty())
            failures[r] = (round < replays ? "replay " + std::to_string(round) : std::string("plain calls after")) +
                          ", call " + std::to_string(k) + ": " + diff;
        }
      }
    });
    for (int r = 0; r < ranks_n; ++r) EXPECT_EQ(failures[r], "") << ranks.describe() << ", rank " << r;
  }
}

// One all_gather_columns call: rows × cols on every rank into rows × width.
struct GatherCase {
  size_t rows, cols, width;
  size_t in_bytes() const { return rows * cols * 2; }
  size_t out_bytes() const { return rows * width * 2; }
};

// Inputs of rank r with a -0.0 and a +0.0 among them, and what every rank must hold: rank q's row i at
// columns [q·cols, (q+1)·cols) of row i, up to the width, a -0.0 as +0.0.
std::vector<Bytes> gather_inputs(int ranks, const GatherCase& c, uint64_t seed) {
  std::vector<Bytes> inputs = inputs_of(ranks, DType::bf16, c.rows * c.cols, seed);
  for (int r = 0; r < ranks; ++r) {
    const uint16_t minus_zero = 0x8000, plus_zero = 0;
    const size_t n = c.rows * c.cols;
    std::memcpy(inputs[r].data() + 2 * ((seed + r) % n), &minus_zero, 2);
    std::memcpy(inputs[r].data() + 2 * ((seed * 7 + r + 1) % n), &plus_zero, 2);
  }
  return inputs;
}

Bytes gathered_columns(const std::vector<Bytes>& inputs, const GatherCase& c) {
  Bytes out(c.out_bytes());
  for (size_t i = 0; i < c.rows; ++i)
    for (size_t j = 0; j < c.width; ++j) {
      const size_t q = j / c.cols, k = i * c.cols + j % c.cols;
      uint16_t v;
      std::memcpy(&v, inputs[q].data() + 2 * k, 2);
      if (v == 0x8000) v = 0;
      std::memcpy(out.data() + 2 * (i * c.width + j), &v, 2);
    }
  return out;
}

TEST_F(PeerAllReduceGpuTest, GathersColumns) {
  test::AllReduceWatchdog watchdog(std::chrono::seconds(240));
  for (const auto& devices : test_groups()) {
    Ranks ranks(devices);
    const size_t R = static_cast<size_t>(ranks.size());
    const size_t most = ranks.handles[0]->gather_bytes();
    ASSERT_EQ(most, peer_all_gather_bytes);
    // A batch-1 step's logits of a 128256-token vocabulary split R ways (one 512-thread pass of the
    // grid at tp2); a few rows cut inside the last rank's part; one pack a rank; the largest message
    // (more packs than the grid's threads: each thread takes several).
    const size_t vocab_cols = (128256 / R + 7) / 8 * 8;
    const std::vector<GatherCase> cases = {
        {1, vocab_cols, 128256}, {3, 120, 120 * R - 16}, {1, 8, 8 * R}, {4, most / 8, most / 8 * R}};
    constexpr int plain_rounds = 8, replays = 40, rounds = plain_rounds + replays + 1;
    std::vector<std::string> failures(R);
    {
      // Bad arguments are refused before anything is launched (one rank alone may make them).
      DeviceBuffer a(devices[0], 4096), b(devices[0], 4096);
      const cudaStream_t s0 = ranks.streams[0];
      PeerAllReduce& rank0 = *ranks.handles[0];
      EXPECT_THROW(rank0.all_gather_columns(a.get(), b.get(), 1, 12, 24, s0), std::invalid_argument);
      EXPECT_THROW(rank0.all_gather_columns(a.get(), b.get(), 1, 16, 16 * R + 8, s0), std::invalid_argument);
      EXPECT_THROW(rank0.all_gather_columns(a.get(), b.get() + 2, 1, 16, 16, s0), std::invalid_argument);
      EXPECT_THROW(rank0.all_gather_columns(a.get(), b.get(), 1, most / 2 + 8, 8, s0), std::invalid_argument);
    }
    on_every_rank(static_cast<int>(R), [&](int r) {
      TROUPE_CUDA_CHECK(cudaSetDevice(ranks.devices[r]));
      const cudaStream_t s = ranks.streams[r];
      std::vector<std::unique_ptr<DeviceBuffer>> ins, outs;
      for (const GatherCase& c : cases) {
        ins.push_back(std::make_unique<DeviceBuffer>(ranks.devices[r], c.in_bytes()));
        outs.push_back(std::make_unique<DeviceBuffer>(ranks.devices[r], c.out_bytes() + guard_bytes));
      }
      const auto enqueue_calls = [&] {
        for (size_t k = 0; k < cases.size(); ++k)
          ranks.handles[r]->all_gather_columns(ins[k]->get(), outs[k]->get(), cases[k].rows, cases[k].cols,
                                               cases[k].width, s);
      };
      const CapturedCalls captured(s, enqueue_calls);
      // Every rank runs every round, failed or not: a rank that stopped early would leave its peers
      // waiting.
      for (int round = 0; round < rounds; ++round) {
        std::vector<Bytes> want;
        for (size_t k = 0; k < cases.size(); ++k) {
          const GatherCase& c = cases[k];
          const std::vector<Bytes> inputs = gather_inputs(static_cast<int>(R), c, 7000 + round * 16 + k);
          want.push_back(gathered_columns(inputs, c));
          TROUPE_CUDA_CHECK(cudaMemcpyAsync(ins[k]->get(), inputs[r].data(), c.in_bytes(), cudaMemcpyHostToDevice, s));
          TROUPE_CUDA_CHECK(cudaMemsetAsync(outs[k]->get(), static_cast<int>(guard_value), c.out_bytes() + guard_bytes, s));
        }
        const bool replay = round >= plain_rounds && round < plain_rounds + replays;
        if (replay)
          TROUPE_CUDA_CHECK(cudaGraphLaunch(captured.exec, s));
        else
          enqueue_calls();
        std::vector<Bytes> got;
        for (size_t k = 0; k < cases.size(); ++k) {
          got.emplace_back(cases[k].out_bytes() + guard_bytes);
          TROUPE_CUDA_CHECK(cudaMemcpyAsync(got[k].data(), outs[k]->get(), got[k].size(), cudaMemcpyDeviceToHost, s));
        }
        TROUPE_CUDA_CHECK(cudaStreamSynchronize(s));
        for (size_t k = 0; k < cases.size() && failures[r].empty(); ++k) {
          const GatherCase& c = cases[k];
          const std::string where = std::string(replay ? "replay" : "plain") + " round " + std::to_string(round) +
                                    ", " + std::to_string(c.rows) + " rows of " + std::to_string(c.cols) +
                                    " into " + std::to_string(c.width) + ": ";
          const std::string diff = first_difference(got[k].data(), want[k], DType::bf16);
          if (!diff.empty()) failures[r] = where + diff;
          for (size_t i = c.out_bytes(); i < got[k].size() && failures[r].empty(); ++i)
            if (got[k][i] != guard_value) failures[r] = where + "wrote past the output, byte " + std::to_string(i);
        }
      }
    });
    for (size_t r = 0; r < R; ++r) EXPECT_EQ(failures[r], "") << ranks.describe() << ", rank " << r;
  }
}

}  // namespace
}  // namespace troupe::cuda
