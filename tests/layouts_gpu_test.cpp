// Every parallel layout on real GPUs (NCCL between them) computes what one GPU computes: 16
// concurrent greedy requests of mixed prompt lengths, 32 to 40 tokens each, give the tokens of tp1
// on one GPU. bf16 sums in another order may flip a near-tie: a dense model may leave tp1's path
// only where tp1's two best tokens were within 0.1 of each other in log-probability, and then
// it must take tp1's second-best token (the rest of that request is not compared). In an MoE model
// the same rounding also flips near-ties of the router, which sends a token to another expert and
// moves its logits further: there a layout may leave where tp1's best token led by at most
// 0.3, taking one of tp1's five best (test::greedy_departures; the CPU backend's f32 runs of the same layouts agree
// to 1e-6: runtime_layouts_test). A departure beyond that is accepted where the f32 CPU run of the
// tiny model takes the layout's token: then tp1 is the one that rounded off the exact path (a router
// tie one bf16 step apart sends tiny-qwen3-moe's request 0 to 172 at tp1 and 313 at tp2 and in f32;
// tools/layout_router_ties.py shows it). Afterwards no KV block is held.
//
// Models: the tiny fixtures from files, and the qwen3-0.6b and qwen3-30b-a3b presets with dummy
// weights (one model in every layout, see Model's Loader) when TROUPE_LAYOUT_BIG=1, as on the GPU
// machine. Layouts: those that fit the visible GPUs (2 or 4).
#include <gtest/gtest.h>

#include <thread>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "config/error.hpp"
#include "kernels/cuda_backend.hpp"
#include "tests/runtime_support.hpp"
#include "tests/stack_watchdog.hpp"
#include "tests/test_support.hpp"
#include "tools/model_maker.hpp"

namespace troupe {
namespace {

using test::start_watchdog;
using test::touch;

struct Layout {
  int tp, pp, dp;
  bool ep;
  int world() const { return tp * pp * dp; }
  std::string name() const { return ParallelConfig{tp, pp, dp, ep}.name(); }
};

struct TestModel {
  std::string name;
  std::filesystem::path dir;
  bool dummy = false;
  bool moe = false;
};

std::vector<test::Job> jobs_for(int vocab) {
  std::mt19937 rng(5);
  std::vector<test::Job> jobs(16);
  for (test::Job& j : jobs) {
    const int len = 1 + static_cast<int>(rng() % 200);
    for (int i = 0; i < len; ++i) j.prompt.push_back(static_cast<int32_t>(rng() % std::min(vocab, 10000)));
    j.params.temperature = 0;
    j.params.max_tokens = 32 + static_cast<int>(rng() % 9);
    j.params.ignore_eos = true;
    j.params.logprobs = 5;
  }
  return jobs;
}

std::vector<test::Outcome> run(const TestModel& m, const Layout& l, const std::vector<test::Job>& jobs, double* seconds,
                               const char* device = "cuda") {
  RuntimeOptions o;
  o.model_dir = m.dir;
  o.parallel = {l.tp, l.pp, l.dp, l.ep};
  o.device = device;
  o.load_format = m.dummy ? "dummy" : "auto";
  o.kv_cache_memory = int64_t{512} << 20;
  o.max_model_len = 512;
  o.log = [](const std::string& line) { std::fprintf(stderr, "    %s\n", line.c_str()); };
  std::fprintf(stderr, "%s %s: starting\n", m.name.c_str(), l.name().c_str());
  touch();
  Runtime runtime(o);
  const auto start = std::chrono::steady_clock::now();
  auto out = test::run_jobs(runtime, jobs, 120);
  *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "%s %s: requests done in %.2f s\n", m.name.c_str(), l.name().c_str(), *seconds);
  touch();
  for (const auto& o : out)
    if (!o.final.error.empty()) {
      ADD_FAILURE() << m.name << " " << l.name() << ": " << o.final.error;
      break;
    }
  EXPECT_TRUE(runtime.stats().all_idle()) << m.name << " " << l.name() << ": a KV block is held after the run";
  runtime.reset_prefix_cache();
  for (const auto& d : runtime.stats().dp) EXPECT_EQ(d.used_blocks, 0) << m.name << " " << l.name();
  return out;
}

std::vector<Layout> layouts(bool moe, int gpus) {
  std::vector<Layout> all = {{2, 1, 1, false}, {1, 2, 1, false}, {1, 1, 2, false}};
  if (moe) all.insert(all.end(), {{2, 1, 1, true}, {1, 1, 2, true}});
  if (gpus >= 4) {
    all.insert(all.end(), {{4, 1, 1, false}, {1, 4, 1, false}, {2, 2, 1, false}});
    if (moe) all.insert(all.end(), {{2, 1, 2, true}, {1, 1, 4, true}});
  }
  return all;
}

std::filesystem::path config_only(const std::string& preset) {
  const auto dir = test::binary_dir() / "test-models" / (preset + "-config");
  if (std::filesystem::exists(dir / "config.json")) return dir;
  MakeModelOptions options;
  options.preset = preset;
  options.out = dir;
  options.config_only = true;
  options.no_tokenizer = true;  // token ids in and out
  make_model(options);
  return dir;
}

TEST(LayoutsGpu, EveryLayoutGivesTp1sGreedyTokens) {
  std::setvbuf(stdout, nullptr, _IONBF, 0);
  start_watchdog(120);
  const char* only = std::getenv("TROUPE_LAYOUT_ONLY");  // e.g. "tp2,pp2": just these layouts
  const int gpus = cuda_device_count();
  if (gpus < 2) GTEST_SKIP() << gpus << " CUDA device(s): the layouts need 2 or 4 GPUs (run on nvidia-h100-x2/x4)";
  std::vector<TestModel> models = {{"tiny-llama", test::tiny_model("tiny-llama"), false, false},
                               {"tiny-qwen3-moe", test::tiny_model("tiny-qwen3-moe"), false, true}};
  if (const char* big = std::getenv("TROUPE_LAYOUT_BIG"); big && std::string(big) == "1") {
    models.push_back({"qwen3-0.6b", config_only("qwen3-0.6b"), true, false});
    models.push_back({"qwen3-30b-a3b", config_only("qwen3-30b-a3b"), true, true});
  }
  for (const TestModel& m : models) {
    const ModelConfig config = load_model_config(m.dir);
    const auto jobs = jobs_for(config.vocab_size);
    double seconds = 0;
    const auto ref = run(m, {1, 1, 1, false}, jobs, &seconds);
    std::printf("%s tp1: %.2f s\n", m.name.c_str(), seconds);
    // The f32 arbiter, for the tiny models (a preset's f32 run would take minutes on the CPU).
    std::vector<test::Outcome> f32;
    if (!m.dummy) f32 = run(m, {1, 1, 1, false}, jobs, &seconds, "cpu");
    for (const Layout& l : layouts(m.moe, gpus)) {
      if (l.world() > gpus) continue;
      try {
        validate_parallel_config(ParallelConfig{l.tp, l.pp, l.dp, l.ep}, config);
      } catch (const ConfigError&) {
        continue;  // e.g. pp4 of a two-layer model
      }
      if (only && ("," + std::string(only) + ",").find("," + l.name() + ",") == std::string::npos) continue;
      const auto got = run(m, l, jobs, &seconds);
      const int diverged =
          test::greedy_departures(m.name + " " + l.name(), ref, got, m.moe ? test::kMoeNearTie : test::kDenseNearTie,
                                  f32.empty() ? nullptr : &f32);
      std::printf("%s %s: %.2f s, %d of %zu requests left tp1's path (at near-ties)\n", m.name.c_str(),
                  l.name().c_str(), seconds, diverged, jobs.size());
      std::fflush(stdout);
      touch();
    }
  }
}

}  // namespace
}  // namespace troupe
