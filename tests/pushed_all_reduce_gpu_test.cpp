// The pushed all-reduce (engine/pushed_all_reduce.hpp) against the peer all-reduce kernel it stands
// in for. On every visible GPU (2, 4 or 8) and on a 2-GPU subgroup, each rank a thread with its own
// CUDA backend, chains of decode sublayers run both ways from the same inputs:
//
//   reference: linear or silu_mul_linear → PeerAllReduce::all_reduce_add → rms_norm_linear
//   pushed:    linear_push or silu_mul_linear_push → gather_add → rms_norm_linear
//   normed:    linear_push or silu_mul_linear_push → gather_add_rms_norm → normed_linear
//
// and every rank's residual and projection outputs must be the same bits, and the normed input the
// gather makes must be the rms_norm kernel's. The producers take the
// GEMV's four-row path (one 8-byte store per token and warp), its one-row path, several tokens, and
// the standalone sending kernel (what the backend launches after a projection the GEMV declines). Chains
// run many sublayers back to back without a host synchronisation (the call count passes through
// both mailboxes many times, and ranks run ahead of each other), then captured into a CUDA graph
// and replayed.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/backend.hpp"
#include "engine/dtype.hpp"
#include "kernels/cuda_backend.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/peer_all_reduce.hpp"
#include "kernels/pushed_all_reduce.hpp"
#include "tests/all_reduce_watchdog.hpp"

namespace troupe {
namespace {

using Bits = std::vector<uint16_t>;

Bits random_bits(size_t n, uint64_t seed, float scale) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  Bits b(n);
  for (auto& v : b) v = f32_to_bf16(dist(gen));
  return b;
}

// One chain's shapes: hidden size h (the all-reduced rows), the o projection's input width, the
// down projection's intermediate width, the next projection's rows; tokens per step.
struct Shape {
  int64_t h, attn, inter, next, tokens;
  std::string describe() const {
    return "h " + std::to_string(h) + ", attn " + std::to_string(attn) + ", inter " + std::to_string(inter) +
           ", tokens " + std::to_string(tokens);
  }
};

// A rank's tensors for one shape: its own weights and inputs (as a tensor-parallel shard has), the
// residual and norm shared by all ranks.
struct RankTensors {
  Tensor attn, gate_up, w_o, w_down, w_next, norm;
  Tensor residual, delta, act, normed, out;
};

Tensor upload(Backend& be, const Bits& b, std::vector<int64_t> shape) {
  Tensor t = be.allocate(shape, DType::bf16);
  be.upload({b.data(), DType::bf16, shape}, t);
  return t;
}

// A bf16 tensor's values, exactly (download widens them to f32), as bit patterns.
std::vector<uint32_t> download(Backend& be, const Tensor& t) {
  std::vector<float> f(static_cast<size_t>(t.numel()));
  be.download(t, f.data());
  std::vector<uint32_t> bits(f.size());
  std::memcpy(bits.data(), f.data(), f.size() * sizeof(float));
  return bits;
}

RankTensors make_tensors(Backend& be, const Shape& s, int rank, uint64_t seed) {
  RankTensors t;
  const uint64_t mine = seed + 1000 * static_cast<uint64_t>(rank + 1);
  t.attn = upload(be, random_bits(s.tokens * s.attn, mine + 1, 1.0f), {s.tokens, s.attn});
  t.gate_up = upload(be, random_bits(s.tokens * 2 * s.inter, mine + 3, 1.0f), {s.tokens, 2 * s.inter});
  t.w_o = upload(be, random_bits(s.h * s.attn, mine + 4, 0.03f), {s.h, s.attn});
  t.w_down = upload(be, random_bits(s.h * s.inter, mine + 5, 0.03f), {s.h, s.inter});
  t.w_next = upload(be, random_bits(s.next * s.h, mine + 6, 0.03f), {s.next, s.h});
  t.norm = upload(be, random_bits(s.h, seed + 7, 1.0f), {s.h});
  t.residual = upload(be, random_bits(s.tokens * s.h, seed + 8, 1.0f), {s.tokens, s.h});
  t.delta = be.allocate({s.tokens, s.h}, DType::bf16);
  t.act = be.allocate({s.tokens, s.inter}, DType::bf16);
  t.normed = be.allocate({s.tokens, s.h}, DType::bf16);
  t.out = be.allocate({s.tokens, s.next}, DType::bf16);
  return t;
}

enum class Way { all_reduce_kernel, pushed, pushed_normed };

// Sublayer j of a chain: its producer (0: o projection, 1: down projection with SwiGLU, 2: the o
// projection and then the standalone send), then the sum into the residual and the next norm's
// projection. Ways other than pushed_normed then write the rms_norm kernel's output into normed.
void sublayer(Backend& be, RankTensors& t, cuda::PeerAllReduce* reference, const PushedAllReduce* pushed, Way way,
              int j) {
  const float eps = 1e-6f;
  const int producer = j % 3;
  if (way == Way::all_reduce_kernel) {
    if (producer == 1)
      be.silu_mul_linear(t.gate_up, t.w_down, t.act, t.delta);
    else
      be.linear(t.attn, t.w_o, nullptr, t.delta);
    const auto stream = reinterpret_cast<cudaStream_t>(cuda_stream_of(be).stream);
    reference->all_reduce_add(t.delta.data(), t.residual.data(), static_cast<size_t>(t.delta.numel()), DType::bf16,
                              stream);
    be.rms_norm_linear(t.residual, t.norm, eps, t.w_next, nullptr, t.normed, t.out);
    be.rms_norm(t.residual, t.norm, eps, t.normed);
    return;
  }
  if (producer == 1) {
    be.silu_mul_linear_push(t.gate_up, t.w_down, t.delta, *pushed);
  } else if (producer == 2) {
    // What the backend does where the GEMV declines a projection: the projection, then the send.
    be.linear(t.attn, t.w_o, nullptr, t.delta);
    cuda::pushed_send(static_cast<const __nv_bfloat16*>(t.delta.data()), static_cast<size_t>(t.delta.numel()), *pushed,
                      reinterpret_cast<cudaStream_t>(cuda_stream_of(be).stream));
  } else {
    be.linear_push(t.attn, t.w_o, nullptr, t.delta, *pushed);
  }
  if (way == Way::pushed_normed) {
    be.gather_add_rms_norm(t.delta, t.residual, *pushed, t.norm, eps, t.normed);
    be.normed_linear(t.normed, t.w_next, nullptr, t.out);
    return;
  }
  be.gather_add(t.delta, t.residual, *pushed);
  be.rms_norm_linear(t.residual, t.norm, eps, t.w_next, nullptr, t.normed, t.out);
  be.rms_norm(t.residual, t.norm, eps, t.normed);
}

struct Result {
  std::vector<uint32_t> residual, out, normed;
};

// `eager` sublayers one after another, then a graph of `graph_sublayers` replayed `replays` times,
// on every rank, each way; every rank's results.
std::vector<Result> run_chain(const std::vector<int>& devices, const Shape& s, Way way, uint64_t seed) {
  constexpr int eager = 60, graph_sublayers = 6, replays = 20;
  const int n = static_cast<int>(devices.size());
  auto group = cuda::PeerAllReduceGroup::create(devices, size_t{4} << 20);
  std::vector<Result> results(static_cast<size_t>(n));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        std::unique_ptr<Backend> be = make_cuda_backend(devices[r]);
        cuda::PeerAllReduce peer(group, r);
        const PushedAllReduce ar = peer.pushed();
        RankTensors t = make_tensors(*be, s, r, seed);
        be->synchronize();
        for (int j = 0; j < eager; ++j) sublayer(*be, t, &peer, &ar, way, j);
        if (!be->begin_capture()) throw std::runtime_error("the CUDA backend did not begin a capture");
        for (int j = 0; j < graph_sublayers; ++j) sublayer(*be, t, &peer, &ar, way, j);
        std::shared_ptr<void> graph = be->end_capture();
        for (int i = 0; i < replays; ++i) be->replay(graph);
        be->synchronize();
        results[r] = {download(*be, t.residual), download(*be, t.out), download(*be, t.normed)};
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  for (auto& th : threads) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return results;
}

std::string first_difference(const std::vector<uint32_t>& got, const std::vector<uint32_t>& want) {
  if (got.size() != want.size()) return "sizes " + std::to_string(got.size()) + " and " + std::to_string(want.size());
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != want[i])
      return "element " + std::to_string(i) + ": bits " + std::to_string(got[i]) + " against " + std::to_string(want[i]);
  return "";
}

std::vector<std::vector<int>> groups() {
  const int count = cuda_device_count();
  const int all = count >= 8 ? 8 : count >= 4 ? 4 : 2;
  std::vector<int> first;
  for (int d = 0; d < all; ++d) first.push_back(d);
  std::vector<std::vector<int>> g{first};
  if (all > 2) g.push_back({count - 1, 0});
  return g;
}

// Lets the GEMV take up to 8 tokens in backends made while it lives (the default is one), and
// restores the variable for the tests after it.
class SeveralTokensInTheGemv {
 public:
  SeveralTokensInTheGemv() {
    if (const char* v = std::getenv(kName)) saved_ = v, had_ = true;
    setenv(kName, "8", 1);
  }
  ~SeveralTokensInTheGemv() {
    if (had_)
      setenv(kName, saved_.c_str(), 1);
    else
      unsetenv(kName);
  }

 private:
  static constexpr const char* kName = "TROUPE_SMALL_BATCH_GEMV";
  std::string saved_;
  bool had_ = false;
};

TEST(PushedAllReduceGpu, GivesTheAllReduceAddsBits) {
  const int count = cuda_device_count();
  if (count == 0) GTEST_SKIP() << "no CUDA device: run on the GPU machine (tools/gpu_smoke.sh)";
  if (count < 2) GTEST_SKIP() << "the pushed all-reduce needs at least 2 GPUs; this machine shows " << count;
  test::AllReduceWatchdog watchdog(std::chrono::seconds(240));
  SeveralTokensInTheGemv tokens;
  const std::vector<Shape> shapes = {
      {4096, 2048, 3584, 1536, 1},  // llama-3.1-8b's tp4 shard: four rows a warp
      {2048, 2048, 2048, 1024, 1},  // one row a warp, whole rows prefetched
      {4096, 1024, 1536, 512, 3},   // three tokens: one row a warp
      {1024, 512, 768, 256, 2},     // two tokens, four rows a warp
      {4096, 2048, 7168, 3072, 1},  // llama-3.1-8b's tp2 shard: streamed through shared memory
      {4096, 1024, 1024, 8448, 1},  // the next projection (69 MB) streamed, its input plain or normed
      {5120, 1024, 1024, 512, 2},   // rows of 640 packs: a gather thread takes two, as rms_norm's does
  };
  uint64_t seed = 7100;
  for (const auto& devices : groups())
    for (const Shape& s : shapes) {
      std::fprintf(stderr, "%zu GPUs, %s: all-reduce kernel\n", devices.size(), s.describe().c_str());
      const std::vector<Result> want = run_chain(devices, s, Way::all_reduce_kernel, seed);
      for (const Way way : {Way::pushed, Way::pushed_normed}) {
        const char* name = way == Way::pushed ? "pushed" : "pushed, normed by the gather";
        std::fprintf(stderr, "%zu GPUs, %s: %s\n", devices.size(), s.describe().c_str(), name);
        const std::vector<Result> got = run_chain(devices, s, way, seed);
        for (size_t r = 0; r < devices.size(); ++r) {
          const std::string what =
              s.describe() + ", " + name + ", " + std::to_string(devices.size()) + " GPUs, rank " + std::to_string(r);
          EXPECT_EQ(first_difference(got[r].residual, want[r].residual), "") << "residual, " << what;
          EXPECT_EQ(first_difference(got[r].normed, want[r].normed), "") << "normed input, " << what;
          EXPECT_EQ(first_difference(got[r].out, want[r].out), "") << "next projection, " << what;
          // Every rank holds the same residual.
          EXPECT_EQ(first_difference(got[r].residual, got[0].residual), "") << "residual against rank 0, " << what;
        }
      }
      seed += 100;
    }
}

}  // namespace
}  // namespace troupe
