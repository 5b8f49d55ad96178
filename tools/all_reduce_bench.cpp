// Times the peer all-reduce (kernels/peer_all_reduce.hpp), one-shot and two-shot, against NCCL's
// ncclAllReduce on the same GPUs, bf16, in place, at 8 KiB to 4 MiB: on all visible GPUs (2, 4 or 8)
// and on 2. One thread and one stream per GPU, as the workers drive them. Each method runs `iters`
// back-to-back calls after a warm-up, timed with CUDA events on every rank (the table shows the
// slowest rank), launched one by one ("plain") and as one CUDA graph of `iters` calls ("graph").
// Before timing, one call per method and size is checked (rank r contributes r + 1 everywhere).
//
//   all_reduce_bench [--json out.json] [--iters 200] [--warmup 20] [--blocks 36] [--gpus N]
//
// "best/nccl" is the faster of one-shot and two-shot over NCCL (below 1: ours is faster). The crossover
// between one-shot and two-shot is what peer_all_reduce_two_shot_bytes() should say; where NCCL is
// faster, the communicator should use NCCL.
//
// A second table times the peer all-gather (PeerAllReduce::all_gather_columns: each rank's part of
// 16 KiB to peer_all_gather_bytes, placed side by side) against ncclAllGather of the same parts into
// a stack; the communicator would also copy out of NCCL's stack, which is not timed here.
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <barrier>
#include <boost/json.hpp>
#include <boost/program_options.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "engine/dtype.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/peer_all_reduce.hpp"

namespace {

using troupe::DType;
using troupe::cuda::AllReduceAlgorithm;
using troupe::cuda::PeerAllReduce;
using troupe::cuda::PeerAllReduceGroup;

void nccl_check(ncclResult_t status, const char* call) {
  if (status != ncclSuccess) throw std::runtime_error(std::string(call) + " failed: " + ncclGetErrorString(status));
}
#define NCCL_CHECK(call) nccl_check((call), #call)

enum class Method { one_shot, two_shot, push, nccl };
const char* method_name(Method m) {
  switch (m) {
    case Method::one_shot: return "one_shot";
    case Method::two_shot: return "two_shot";
    case Method::push: return "push";
    case Method::nccl: return "nccl";
  }
  return "?";
}

struct Options {
  int iters = 200;
  int warmup = 20;
  int blocks = troupe::cuda::peer_all_reduce_default_blocks;
  int gpus = 0;  // 0: all visible, then 2
  std::string json;
};

enum class Op { all_reduce, all_gather };

struct Case {
  size_t bytes;  // all_gather: one rank's part
  Method method;
  bool graph;
  Op op = Op::all_reduce;
};

struct Result {
  int ranks;
  Case c;
  double us_slowest = 0;  // per call, slowest rank
  double us_fastest = 0;
  bool correct = true;
};

const std::vector<size_t> sizes = {size_t{8} << 10, size_t{64} << 10, size_t{512} << 10, size_t{4} << 20};
const std::vector<size_t> gather_sizes = {size_t{16} << 10, size_t{128} << 10, troupe::cuda::peer_all_gather_bytes};

// One rank's state and its part of every case.
class Rank {
 public:
  Rank(int device, std::shared_ptr<PeerAllReduceGroup> group, int rank, ncclComm_t comm)
      : device_(device), rank_(rank), ranks_(group->size()), peer_(std::move(group), rank), comm_(comm) {
    TROUPE_CUDA_CHECK(cudaSetDevice(device_));
    TROUPE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    TROUPE_CUDA_CHECK(cudaMalloc(&buffer_, sizes.back()));
    TROUPE_CUDA_CHECK(cudaMalloc(&gathered_, gather_sizes.back() * ranks_));
    TROUPE_CUDA_CHECK(cudaEventCreate(&start_));
    TROUPE_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~Rank() {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
    cudaFree(buffer_);
    cudaFree(gathered_);
    cudaStreamDestroy(stream_);
  }
  Rank(const Rank&) = delete;
  Rank& operator=(const Rank&) = delete;

  void call(const Case& c) {
    const size_t n = c.bytes / 2;
    if (c.op == Op::all_gather) {
      if (c.method == Method::nccl)
        NCCL_CHECK(ncclAllGather(buffer_, gathered_, n, ncclBfloat16, comm_, stream_));
      else
        peer_.all_gather_columns(buffer_, gathered_, 1, n, n * ranks_, stream_);
      return;
    }
    if (c.method == Method::nccl)
      NCCL_CHECK(ncclAllReduce(buffer_, buffer_, n, ncclBfloat16, ncclSum, comm_, stream_));
    else
      peer_.all_reduce(buffer_, n, DType::bf16, stream_,
                       c.method == Method::one_shot   ? AllReduceAlgorithm::one_shot
                       : c.method == Method::two_shot ? AllReduceAlgorithm::two_shot
                                                      : AllReduceAlgorithm::push);
  }

  // One call on r + 1 everywhere must give 1 + 2 + ... + R (exact in bf16 for R ≤ 8); a gather, part q
  // holding q + 1.
  bool check(const Case& c, int ranks) {
    const size_t n = c.bytes / 2;
    std::vector<uint16_t> host(n, troupe::f32_to_bf16(static_cast<float>(rank_ + 1)));
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(buffer_, host.data(), c.bytes, cudaMemcpyHostToDevice, stream_));
    call(c);
    if (c.op == Op::all_gather) {
      std::vector<uint16_t> all(n * ranks);
      TROUPE_CUDA_CHECK(cudaMemcpyAsync(all.data(), gathered_, all.size() * 2, cudaMemcpyDeviceToHost, stream_));
      TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
      for (size_t i = 0; i < all.size(); ++i)
        if (all[i] != troupe::f32_to_bf16(static_cast<float>(i / n + 1))) return false;
      return true;
    }
    TROUPE_CUDA_CHECK(cudaMemcpyAsync(host.data(), buffer_, c.bytes, cudaMemcpyDeviceToHost, stream_));
    TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    const uint16_t want = troupe::f32_to_bf16(static_cast<float>(ranks * (ranks + 1) / 2));
    return std::all_of(host.begin(), host.end(), [&](uint16_t v) { return v == want; });
  }

  // Microseconds per call; `ready` lines the ranks up just before the timed region.
  double time(const Case& c, const Options& o, std::barrier<>& ready) {
    for (int i = 0; i < o.warmup; ++i) call(c);
    TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    cudaGraphExec_t exec = nullptr;
    if (c.graph) {
      cudaGraph_t graph;
      TROUPE_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      for (int i = 0; i < o.iters; ++i) call(c);
      TROUPE_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
      TROUPE_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
      TROUPE_CUDA_CHECK(cudaGraphDestroy(graph));
      TROUPE_CUDA_CHECK(cudaGraphLaunch(exec, stream_));  // warm-up replay (first launch uploads the graph)
      TROUPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    }
    ready.arrive_and_wait();
    TROUPE_CUDA_CHECK(cudaEventRecord(start_, stream_));
    if (c.graph)
      TROUPE_CUDA_CHECK(cudaGraphLaunch(exec, stream_));
    else
      for (int i = 0; i < o.iters; ++i) call(c);
    TROUPE_CUDA_CHECK(cudaEventRecord(stop_, stream_));
    TROUPE_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0;
    TROUPE_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    if (exec) TROUPE_CUDA_CHECK(cudaGraphExecDestroy(exec));
    return 1000.0 * ms / o.iters;
  }

  void bind() const { TROUPE_CUDA_CHECK(cudaSetDevice(device_)); }

 private:
  int device_;
  int rank_;
  int ranks_;
  PeerAllReduce peer_;
  ncclComm_t comm_;
  cudaStream_t stream_ = nullptr;
  void* buffer_ = nullptr;
  void* gathered_ = nullptr;  // ranks × the largest gather part
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

std::vector<Result> bench_group(const std::vector<int>& devices, const Options& o) {
  const int ranks = static_cast<int>(devices.size());
  auto group = PeerAllReduceGroup::create(devices, sizes.back(), o.blocks);
  std::vector<ncclComm_t> comms(devices.size());
  NCCL_CHECK(ncclCommInitAll(comms.data(), ranks, devices.data()));

  std::vector<Case> cases;
  for (size_t bytes : sizes)
    for (bool graph : {false, true})
      for (Method m : {Method::one_shot, Method::two_shot, Method::push, Method::nccl})
        if (m != Method::push || bytes <= troupe::cuda::peer_all_reduce_push_bytes) cases.push_back({bytes, m, graph});
  for (size_t bytes : gather_sizes)
    for (bool graph : {false, true})
      for (Method m : {Method::push, Method::nccl}) cases.push_back({bytes, m, graph, Op::all_gather});
  // us[case][rank], ok[case][rank]
  std::vector<std::vector<double>> us(cases.size(), std::vector<double>(devices.size()));
  std::vector<std::vector<char>> ok(cases.size(), std::vector<char>(devices.size()));
  std::barrier<> ready(ranks);
  {
    std::vector<std::thread> threads;
    for (int r = 0; r < ranks; ++r)
      threads.emplace_back([&, r] {
        try {
          Rank rank(devices[r], group, r, comms[r]);
          for (size_t k = 0; k < cases.size(); ++k) {
            rank.bind();
            ok[k][r] = rank.check(cases[k], ranks);
            us[k][r] = rank.time(cases[k], o, ready);
          }
        } catch (const std::exception& e) {
          // The peers now wait for this rank on the GPU or at the barrier: report and stop.
          std::fprintf(stderr, "all_reduce_bench: rank %d: %s\n", r, e.what());
          std::_Exit(1);
        }
      });
    for (auto& t : threads) t.join();
  }
  for (ncclComm_t c : comms) NCCL_CHECK(ncclCommDestroy(c));

  std::vector<Result> results;
  for (size_t k = 0; k < cases.size(); ++k) {
    Result r{ranks, cases[k]};
    r.us_slowest = *std::max_element(us[k].begin(), us[k].end());
    r.us_fastest = *std::min_element(us[k].begin(), us[k].end());
    r.correct = std::all_of(ok[k].begin(), ok[k].end(), [](char c) { return c != 0; });
    results.push_back(r);
  }
  return results;
}

std::string size_name(size_t bytes) {
  return bytes >= (size_t{1} << 20) ? std::to_string(bytes >> 20) + " MiB" : std::to_string(bytes >> 10) + " KiB";
}

// One row per (size, launch): the cases of bench_group in order, the push path's only where it runs;
// then the gathers, a row per (part size, launch).
void print_table(const std::vector<Result>& all) {
  std::vector<Result> results, gathers;
  for (const Result& r : all) (r.c.op == Op::all_gather ? gathers : results).push_back(r);
  std::printf("\n%5s %8s %6s %12s %12s %12s %12s %10s %12s\n", "ranks", "size", "launch", "one-shot us", "two-shot us",
              "push us", "nccl us", "best/nccl", "best busbw");
  for (size_t i = 0; i < results.size();) {
    const Result& one = results[i];
    const Result& two = results[i + 1];
    const bool has_push = results[i + 2].c.method == Method::push;
    const Result* push = has_push ? &results[i + 2] : nullptr;
    const Result& nccl = results[i + (has_push ? 3 : 2)];
    i += has_push ? 4 : 3;
    double best = std::min(one.us_slowest, two.us_slowest);
    if (push) best = std::min(best, push->us_slowest);
    const double busbw =
        static_cast<double>(one.c.bytes) / (best * 1e-6) * 2.0 * (one.ranks - 1) / one.ranks / 1e9;  // GB/s
    const bool correct = one.correct && two.correct && nccl.correct && (!push || push->correct);
    std::printf("%5d %8s %6s %12.2f %12.2f %12s %12.2f %10.2f %9.1f GB/s%s\n", one.ranks, size_name(one.c.bytes).c_str(),
                one.c.graph ? "graph" : "plain", one.us_slowest, two.us_slowest,
                push ? std::to_string(push->us_slowest).substr(0, 6).c_str() : "-", nccl.us_slowest,
                best / nccl.us_slowest, busbw, correct ? "" : "   WRONG RESULT (see json)");
  }
  std::printf("\n%5s %10s %6s %14s %14s %11s\n", "ranks", "part", "launch", "peer gather us", "nccl gather us",
              "peer/nccl");
  for (size_t i = 0; i + 1 < gathers.size(); i += 2) {
    const Result& peer = gathers[i];
    const Result& nccl = gathers[i + 1];
    std::printf("%5d %10s %6s %14.2f %14.2f %11.2f%s\n", peer.ranks, size_name(peer.c.bytes).c_str(),
                peer.c.graph ? "graph" : "plain", peer.us_slowest, nccl.us_slowest, peer.us_slowest / nccl.us_slowest,
                peer.correct && nccl.correct ? "" : "   WRONG RESULT (see json)");
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Before any NCCL call: NVLink multicast (NVLS) stays off on shared hosts.
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  namespace po = boost::program_options;
  Options o;
  po::options_description desc("all_reduce_bench: the peer all-reduce against NCCL");
  desc.add_options()("help", "this text")("json", po::value(&o.json), "write the results to this file")(
      "iters", po::value(&o.iters)->default_value(o.iters), "timed calls per case")(
      "warmup", po::value(&o.warmup)->default_value(o.warmup), "untimed calls before them")(
      "blocks", po::value(&o.blocks)->default_value(o.blocks), "blocks of the peer all-reduce kernel")(
      "gpus", po::value(&o.gpus)->default_value(o.gpus), "group size (2, 4 or 8); 0: all visible GPUs, then 2");
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, desc), vm);
    po::notify(vm);
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n" << desc;
    return 2;
  }
  if (vm.count("help")) {
    std::cout << desc;
    return 0;
  }
  if (o.iters < 1 || o.warmup < 0) {
    std::cerr << "--iters must be positive and --warmup non-negative\n";
    return 2;
  }

  try {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
    if (count < 2) {
      std::fprintf(stderr, "all_reduce_bench: needs at least 2 GPUs, found %d\n", count);
      return 2;
    }
    std::vector<int> group_sizes;
    if (o.gpus != 0) {
      if (o.gpus > count) throw std::invalid_argument("--gpus " + std::to_string(o.gpus) + " but " +
                                                      std::to_string(count) + " GPUs are visible");
      group_sizes = {o.gpus};
    } else {
      const int all = count >= 8 ? 8 : count >= 4 ? 4 : 2;
      group_sizes = {all};
      if (all > 2) group_sizes.push_back(2);
    }
    cudaDeviceProp prop{};
    TROUPE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    int nccl_version = 0;
    NCCL_CHECK(ncclGetVersion(&nccl_version));
    std::printf("%s x%d, NCCL %d, %d iterations after %d warm-up, %d blocks x %d threads\n", prop.name, count,
                nccl_version, o.iters, o.warmup, o.blocks, troupe::cuda::peer_all_reduce_threads);

    boost::json::array rows;
    for (int g : group_sizes) {
      std::vector<int> devices;
      for (int d = 0; d < g; ++d) devices.push_back(d);
      const std::vector<Result> results = bench_group(devices, o);
      print_table(results);
      std::printf("(two-shot threshold for %d ranks: %zu bytes)\n", g,
                  troupe::cuda::peer_all_reduce_two_shot_bytes(g));
      for (const Result& r : results)
        rows.push_back(boost::json::object{{"ranks", r.ranks},
                                           {"op", r.c.op == Op::all_gather ? "all_gather" : "all_reduce"},
                                           {"bytes", r.c.bytes},
                                           {"method", method_name(r.c.method)},
                                           {"launch", r.c.graph ? "graph" : "plain"},
                                           {"us_per_call", r.us_slowest},
                                           {"us_per_call_fastest_rank", r.us_fastest},
                                           {"correct", r.correct}});
    }
    if (!o.json.empty()) {
      const boost::json::object doc{{"device", prop.name},
                                    {"gpus_visible", count},
                                    {"nccl_version", nccl_version},
                                    {"iters", o.iters},
                                    {"warmup", o.warmup},
                                    {"blocks", o.blocks},
                                    {"threads", troupe::cuda::peer_all_reduce_threads},
                                    {"results", rows}};
      std::ofstream out(o.json);
      out << boost::json::serialize(doc) << "\n";
      if (!out) throw std::runtime_error("cannot write " + o.json);
      std::printf("wrote %s\n", o.json.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "all_reduce_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
