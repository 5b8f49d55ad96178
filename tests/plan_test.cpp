// `troupe plan` against the engine: every rank's weight bytes, heads and KV block size as the plan
// computes them equal what Model and ModelRunner allocate on the CPU backend, for dense and MoE models
// and the layouts that slice them differently; invalid layouts carry the server's messages; the
// command's JSON lists every factorisation of the GPU count, and bad flags exit 2 naming the flag.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <tuple>

#include "config/error.hpp"
#include "engine/cpu_backend.hpp"
#include "engine/model_runner.hpp"
#include "tests/test_support.hpp"
#include "tools/commands.hpp"
#include "tools/layout_plan.hpp"
#include "tools/model_layout.hpp"
#include "tools/model_maker.hpp"
#include "tools/presets.hpp"

namespace troupe {
namespace {

struct Layout {
  int tp, pp, dp;
  bool ep;
};

ParallelConfig parallel(const Layout& l) { return {l.tp, l.pp, l.dp, l.ep}; }

// Loads every rank of the layout as the runtime does (weights from `dir`, or dummy weights when it is
// empty) and checks the plan's figures against each.
void expect_plan_matches_engine(const ModelConfig& c, const std::filesystem::path& dir, const Layout& l,
                                const std::string& what) {
  const ParallelConfig p = parallel(l);
  SCOPED_TRACE(what + " " + p.name());
  ASSERT_NO_THROW(validate_parallel_config(p, c));
  std::optional<WeightFiles> files;
  if (!dir.empty()) files.emplace(WeightFiles::open(dir));
  PlanHardware hw;
  hw.dtype = DType::f32;
  const LayoutPlan plan = plan_layout(c, p, hw);
  ASSERT_TRUE(plan.valid) << plan.error;
  ASSERT_EQ(plan.ranks.size(), static_cast<size_t>(p.world_size()));
  for (int d = 0; d < l.dp; ++d)
    for (int s = 0; s < l.pp; ++s)
      for (int t = 0; t < l.tp; ++t) {
        const ModelShard shard{p, t, s, d};
        const int rank = p.rank(d, s, t);
        SCOPED_TRACE("rank " + std::to_string(rank));
        auto backend = make_cpu_backend();
        auto model = std::make_unique<Model>(c, files ? &*files : nullptr, *backend, 64, LoadProgress{}, shard, ShardComms{});
        const RankPlan& r = plan.ranks[rank];
        EXPECT_EQ(r.rank, rank);
        EXPECT_EQ(rank_weights(c, shard, DType::f32).total(), model->weight_bytes());
        EXPECT_EQ(r.weights.total(), model->weight_bytes());
        EXPECT_EQ(r.heads, model->local_heads());
        EXPECT_EQ(r.kv_heads, model->local_kv_heads());
        EXPECT_EQ(r.layers.begin, model->layers().begin);
        EXPECT_EQ(r.layers.end, model->layers().end);
        // bf16 on the GPU: every tensor is half the size.
        EXPECT_EQ(2 * rank_weights(c, shard, DType::bf16).total(), model->weight_bytes());
        ModelRunner runner(std::move(backend), std::move(model));
        EXPECT_EQ(r.kv_bytes_per_block, runner.kv_bytes_per_block(hw.block_size));
        EXPECT_EQ(kv_bytes_per_block(c, shard, DType::f32, 1), runner.kv_bytes_per_block(1));
      }
}

const std::vector<Layout> dense_layouts{{2, 1, 1, false}, {1, 2, 1, false}, {2, 2, 1, false}, {1, 1, 2, false}};
const std::vector<Layout> moe_layouts{{2, 1, 1, false}, {1, 2, 1, false}, {1, 1, 2, true},  {2, 1, 1, true},
                                      {2, 1, 2, false}, {2, 1, 2, true},  {1, 2, 2, false}, {2, 2, 1, true}};

TEST(Plan, DenseRankWeightsEqualTheEngines) {
  for (const std::string preset : {"tiny-llama", "tiny-qwen2", "tiny-qwen3"}) {
    const auto dir = test::tiny_model(preset);
    const ModelConfig c = load_model_config(dir);
    for (const Layout& l : dense_layouts) expect_plan_matches_engine(c, dir, l, preset);
  }
}

TEST(Plan, MoeRankWeightsEqualTheEngines) {
  for (const std::string preset : {"tiny-qwen2-moe", "tiny-qwen3-moe", "tiny-mixtral"}) {
    const auto dir = test::tiny_model(preset);
    const ModelConfig c = load_model_config(dir);
    for (const Layout& l : moe_layouts) expect_plan_matches_engine(c, dir, l, preset);
  }
}

TEST(Plan, OneKvHeadIsReplicatedOverTensorParallelRanks) {
  const auto dir = test::tiny_model("tiny-llama-mqa");
  const ModelConfig c = load_model_config(dir);
  ASSERT_EQ(c.num_kv_heads, 1);
  for (const Layout& l : {Layout{2, 1, 1, false}, Layout{4, 1, 1, false}}) {
    expect_plan_matches_engine(c, dir, l, "tiny-llama-mqa");
    const LayoutPlan plan = plan_layout(c, parallel(l), {});
    EXPECT_EQ(plan.kv_replication, l.tp);
    for (const RankPlan& r : plan.ranks) EXPECT_EQ(r.kv_heads, 1);
  }
}

// Dummy weights (no file): shapes the presets lack, each on every rank of a few layouts.
TEST(Plan, EdgeShapesEqualTheEngines) {
  const ModelConfig llama = load_model_config(test::tiny_model("tiny-llama"));
  ModelConfig odd_vocab = llama;  // 509 rows: tp 2 pads to 255 each, tp 4 to 128 (the last holds 125)
  odd_vocab.vocab_size = 509;
  ModelConfig biased = llama;  // o_proj's bias lives on tensor-parallel rank 0 only
  biased.attention_bias = biased.attention_output_bias = true;
  ModelConfig tied = llama;  // tied embeddings over pipeline stages: the last stage loads its own copy
  tied.tie_word_embeddings = true;
  ModelConfig untied = llama;
  untied.tie_word_embeddings = false;
  for (const auto& [c, what] : {std::pair{odd_vocab, "vocab 509"}, std::pair{biased, "o_proj bias"},
                                std::pair{tied, "tied"}, std::pair{untied, "untied"}})
    for (const Layout& l : {Layout{2, 1, 1, false}, Layout{4, 1, 1, false}, Layout{1, 2, 1, false},
                            Layout{2, 2, 1, false}})
      expect_plan_matches_engine(c, {}, l, what);
  EXPECT_EQ(vocab_rows_per_rank(odd_vocab, 4), 128);

  ModelConfig moe = load_model_config(test::tiny_model("tiny-qwen2-moe"));
  moe.vocab_size = 509;
  moe.decoder_sparse_step = 2;  // every second layer sparse, and layer 1 in mlp_only_layers
  for (const Layout& l : moe_layouts) expect_plan_matches_engine(moe, {}, l, "qwen2-moe sparse step 2");
}

// With one rank the plan's weights are the checkpoint's parameters, for every preset (the real-model
// presets too: llama-3.1-8b is 8.03 B parameters, 16.06 GB in bf16).
TEST(Plan, OneRankHoldsEveryParameter) {
  for (const Preset& preset : presets()) {
    const ModelConfig c = parse_model_config(boost::json::serialize(preset_config(preset, 0)), preset.name);
    const LayoutPlan plan = plan_layout(c, {}, {});
    ASSERT_TRUE(plan.valid) << preset.name;
    EXPECT_EQ(plan.ranks.at(0).weights.total(), 2 * count_parameters(c)) << preset.name;
    if (preset.name == "llama-3.1-8b") {
      EXPECT_EQ(plan.ranks[0].weights.total(), 16'060'522'496u);
    }
  }
}

// actors/worker.cpp's budget and actors/runtime.cpp's block count, worked by hand for one layout.
TEST(Plan, KvCacheIsSizedAsTheRuntimeSizesIt) {
  const Preset* preset = find_preset("qwen3-32b");
  ASSERT_NE(preset, nullptr);
  const ModelConfig c = parse_model_config(boost::json::serialize(preset_config(*preset, 0)), preset->name);
  PlanHardware hw;
  hw.gpu_memory_bytes = int64_t{80} << 30;
  hw.max_model_len = 8192;
  const LayoutPlan plan = plan_layout(c, {2, 2, 2, false}, hw);
  ASSERT_TRUE(plan.valid) << plan.error;
  const int64_t reserve = (int64_t{1} << 30) + int64_t{2048} * (16 * c.hidden_size + 4 * c.intermediate_size) * 2 +
                          int64_t{256} * c.vocab_size * 8;
  int64_t smallest = INT64_MAX;
  for (const RankPlan& r : plan.ranks) {
    EXPECT_EQ(r.activation_reserve_bytes, reserve);
    // The weights as the CUDA allocator reserves them: never less, at most 2 MiB more per tensor.
    EXPECT_GE(r.weight_device_bytes, r.weights.total());
    EXPECT_LT(r.weight_device_bytes, r.weights.total() + (uint64_t{400} << 20));
    const int64_t budget = static_cast<int64_t>(hw.gpu_memory_bytes * 0.9) - r.used_bytes - reserve;
    EXPECT_EQ(r.kv_budget_bytes, budget);
    // 8 kv heads over tp 2: 4 per rank; 32 of the 64 layers per stage; bf16 k and v.
    EXPECT_EQ(r.kv_bytes_per_block, 2LL * 32 * 16 * 4 * 128 * 2);
    EXPECT_EQ(r.kv_blocks, budget / r.kv_bytes_per_block);
    smallest = std::min(smallest, r.kv_blocks);
  }
  EXPECT_EQ(plan.kv_tokens, smallest * 16);
  ASSERT_EQ(plan.replica_kv_tokens.size(), 2u);
  EXPECT_EQ(plan.kv_replication, 1);
  EXPECT_TRUE(plan.fit_error.empty()) << plan.fit_error;
  EXPECT_EQ(plan.max_model_len, 8192);

  // The sampling rank (last stage, tp 0) also holds the GPU sampler's counts: fewer blocks there.
  const ParallelConfig p{2, 2, 2, false};
  EXPECT_GT(plan.ranks[p.rank(0, 1, 0)].sampler_bytes, 0u);
  EXPECT_EQ(plan.ranks[p.rank(0, 1, 1)].sampler_bytes, 0u);

  // More than the cache holds: the runtime's refusal.
  hw.max_model_len = 10'000'000;
  const LayoutPlan too_long = plan_layout(c, {2, 2, 2, false}, hw);
  EXPECT_NE(too_long.fit_error.find("--max-model-len (10000000) exceeds the"), std::string::npos) << too_long.fit_error;
  // Weights that leave nothing for the cache: no block.
  hw.max_model_len = 0;
  const LayoutPlan too_big = plan_layout(c, {1, 1, 1, false}, PlanHardware{int64_t{40} << 30});
  EXPECT_EQ(too_big.kv_tokens, 0);
  EXPECT_EQ(too_big.fit_error, "the KV cache budget holds no block; raise --kv-cache-memory");
}

TEST(Plan, InvalidLayoutsCarryTheServersMessages) {
  const ModelConfig moe = load_model_config(test::tiny_model("tiny-qwen3-moe"));  // 4 heads, 2 kv heads, 3 layers, 8 experts
  const std::vector<std::tuple<Layout, std::string>> cases{
      {{8, 1, 1, false}, "Total number of attention heads (4) must be divisible by tensor parallel size (8)."},
      {{1, 4, 1, false}, "pipeline parallel size (4) exceeds the number of layers (3)"},
      {{1, 1, 1, true}, "--enable-expert-parallel has no effect: tensor × data parallel size is 1"},
      {{1, 1, 16, true}, "routed experts (8) must be divisible by the expert-parallel size (16)"},
  };
  for (const auto& [l, message] : cases) {
    const LayoutPlan plan = plan_layout(moe, parallel(l), {});
    EXPECT_FALSE(plan.valid) << parallel(l).name();
    EXPECT_EQ(plan.error, message);
    EXPECT_TRUE(plan.ranks.empty());
    try {
      validate_parallel_config(parallel(l), moe);
      ADD_FAILURE() << "the server accepts " << parallel(l).name();
    } catch (const ConfigError& e) {
      EXPECT_EQ(plan.error, e.what());
    }
  }
  // Every layout of 6 GPUs: tp 3 and tp 6 split no head evenly.
  for (const ParallelConfig& p : layouts_for(moe, 6)) {
    const LayoutPlan plan = plan_layout(moe, p, {});
    if (p.tensor_parallel_size % 3 == 0) {
      EXPECT_FALSE(plan.valid) << p.name();
      EXPECT_NE(plan.error.find("must be divisible by tensor parallel size"), std::string::npos) << plan.error;
    }
  }
}

TEST(Plan, CommunicationFollowsTheLayout) {
  const ModelConfig c = load_model_config(test::tiny_model("tiny-qwen3-moe"));  // hidden 64, k 2 of 8
  auto ops = [&](const Layout& l) {
    std::set<std::string> out;
    for (const CommOp& op : plan_layout(c, parallel(l), {}).comms) out.insert(op.where + ":" + op.kind);
    return out;
  };
  EXPECT_EQ(ops({1, 1, 1, false}), std::set<std::string>{});
  EXPECT_EQ(ops({2, 1, 1, true}), (std::set<std::string>{"embedding:all_reduce", "attention:all_reduce", "moe:all_reduce",
                                                         "lm_head:all_gather"}));
  EXPECT_EQ(ops({1, 2, 2, false}), (std::set<std::string>{"moe_dispatch:all_gather", "moe_combine:reduce_scatter",
                                                         "stage_boundary:send_recv"}));
  EXPECT_EQ(ops({1, 1, 4, true}), (std::set<std::string>{"moe_dispatch:all_to_all", "moe_combine:all_to_all"}));
  for (const CommOp& op : plan_layout(c, {1, 1, 4, true}, {}).comms) {
    EXPECT_DOUBLE_EQ(op.off_rank_fraction, 0.75);
    EXPECT_DOUBLE_EQ(op.bytes_per_token, op.where == "moe_dispatch" ? 2 * (64 * 2 + 8) : 2 * 64 * 2);
  }
  // With the server's --all2all-backend allgather_reducescatter, the same layout gathers and scatters.
  PlanHardware gather;
  gather.moe_exchange = MoeExchange::allgather_reducescatter;
  std::set<std::string> gathered;
  for (const CommOp& op : plan_layout(c, {1, 1, 4, true}, gather).comms) gathered.insert(op.where + ":" + op.kind);
  EXPECT_EQ(gathered, (std::set<std::string>{"moe_dispatch:all_gather", "moe_combine:reduce_scatter"}));
  const LayoutPlan ep = plan_layout(c, {1, 1, 4, true}, {});
  EXPECT_DOUBLE_EQ(ep.experts.per_layer, 0.25);
  EXPECT_EQ(ep.experts.experts_per_rank, 2);
  EXPECT_DOUBLE_EQ(ep.experts.local_fraction, 0.25);
  EXPECT_DOUBLE_EQ(ep.experts.rank_touch_probability, 1.0 - (6.0 / 8) * (5.0 / 7));
  // A dense model's data-parallel replicas never talk.
  const ModelConfig dense = load_model_config(test::tiny_model("tiny-llama"));
  EXPECT_TRUE(plan_layout(dense, {1, 1, 4, false}, {}).comms.empty());
}

int run_plan(std::vector<std::string> args, std::string* out = nullptr, std::string* err = nullptr) {
  args.insert(args.begin(), "plan");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  testing::internal::CaptureStdout();
  testing::internal::CaptureStderr();
  const int rc = plan_command(static_cast<int>(argv.size()), argv.data());
  const std::string o = testing::internal::GetCapturedStdout(), e = testing::internal::GetCapturedStderr();
  if (out) *out = o;
  if (err) *err = e;
  return rc;
}

TEST(Plan, CommandWritesEveryFactorisationAsJson) {
  const auto dir = test::tiny_model("tiny-qwen3-moe");
  const auto file = test::scratch_dir() / "plan.json";
  std::string out, err;
  ASSERT_EQ(run_plan({"--model", dir.string(), "--gpus", "4", "--json", file.string(), "--ranks"}, &out, &err), 0) << err;
  EXPECT_NE(out.find("tp2·dp2+ep"), std::string::npos) << out;
  EXPECT_NE(out.find("rank 3 (dp1 pp0 tp1): layers [0, 3), 2 heads, 1 kv heads, experts [6, 8), 180288 weight bytes"), std::string::npos) << out;
  std::ifstream in(file);
  std::stringstream text;
  text << in.rdbuf();
  const boost::json::value v = boost::json::parse(text.str());
  EXPECT_EQ(v.at("gpus").as_int64(), 4);
  std::set<std::tuple<int, int, int, bool>> seen;
  const ModelConfig c = load_model_config(dir);
  for (const boost::json::value& l : v.at("layouts").as_array()) {
    const int tp = static_cast<int>(l.at("tensor_parallel_size").as_int64());
    const int pp = static_cast<int>(l.at("pipeline_parallel_size").as_int64());
    const int dp = static_cast<int>(l.at("data_parallel_size").as_int64());
    const bool ep = l.at("enable_expert_parallel").as_bool();
    EXPECT_EQ(tp * pp * dp, 4);
    EXPECT_TRUE(seen.insert({tp, pp, dp, ep}).second) << "listed twice: " << l.at("name").as_string();
    const ParallelConfig p{tp, pp, dp, ep};
    if (!l.at("valid").as_bool()) {
      EXPECT_EQ(l.at("error").as_string(), plan_layout(c, p, {}).error);
      continue;
    }
    const auto& ranks = l.at("ranks").as_array();
    ASSERT_EQ(ranks.size(), 4u);
    for (const boost::json::value& r : ranks) {
      const ModelShard shard{p, static_cast<int>(r.at("tp").as_int64()), static_cast<int>(r.at("pp").as_int64()),
                             static_cast<int>(r.at("dp").as_int64())};
      EXPECT_EQ(r.at("weight_bytes").at("total").to_number<uint64_t>(), rank_weights(c, shard, DType::bf16).total());
    }
    EXPECT_TRUE(l.at("kv").at("capacity_tokens").is_int64());
    EXPECT_TRUE(l.at("communication").is_array());
  }
  // 1·1·4, 1·2·2, 1·4·1, 2·1·2, 2·2·1, 4·1·1: six factorisations, each with and without EP.
  EXPECT_EQ(seen.size(), 12u);
}

TEST(Plan, BadFlagsExitTwoNamingTheFlag) {
  const std::string dir = test::tiny_model("tiny-llama").string();
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases{
      {{"--model", dir, "--gpus", "0"}, "--gpus"},
      {{"--model", dir}, "gpus"},
      {{"--model", dir, "--gpus", "2", "--dtype", "fp8"}, "--dtype"},
      {{"--model", dir, "--gpus", "2", "--gpu-memory", "-1"}, "--gpu-memory"},
      {{"--model", dir, "--gpus", "2", "--gpu-memory-utilization", "1.5"}, "--gpu-memory-utilization"},
      {{"--model", dir, "--gpus", "2", "--block-size", "0"}, "--block-size"},
      {{"--model", dir, "--gpus", "2", "--max-num-seqs", "0"}, "--max-num-seqs"},
      {{"--model", dir, "--gpus", "2", "--max-model-len", "0"}, "--max-model-len"},
      {{"--model", dir, "--gpus", "2", "--all2all-backend", "naive"}, "--all2all-backend"},
      {{"--model", dir, "--gpus", "2", "--tensor-parallel-size", "2"}, "tensor-parallel-size"},
      {{"--model", "/nonexistent", "--gpus", "2"}, "--model"},
  };
  for (const auto& [args, flag] : cases) {
    std::string err;
    EXPECT_EQ(run_plan(args, nullptr, &err), 2) << flag;
    EXPECT_NE(err.find(flag), std::string::npos) << err;
  }
}

}  // namespace
}  // namespace troupe
