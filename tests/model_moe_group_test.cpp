// A forward pass of an MoE model whose experts are shared by data-parallel ranks exchanges the
// ranks' token counts once when the layers gather every rank's tokens (dp > 1 without expert
// parallelism, or with it and the allgather_reducescatter exchange), not at every MoE layer: the
// exchange waits for the host (on a GPU, a synchronisation per exchange), and every layer sees the
// same tokens. The all-to-all exchange needs its pairs' counts at each layer. Either way the outputs
// match the same ranks' tokens run by one rank alone.
#include <gtest/gtest.h>

#include <cmath>
#include <thread>

#include "config/model_config.hpp"
#include "engine/cpu_backend.hpp"
#include "engine/model.hpp"
#include "engine/safetensors.hpp"
#include "engine/thread_communicator.hpp"
#include "engine/timed_communicator.hpp"
#include "tests/model_support.hpp"
#include "tests/test_support.hpp"

namespace troupe {
namespace {

// Forwards everything; counts the exchanges of token counts.
class CountingCommunicator final : public MeasuredCommunicator {
 public:
  using MeasuredCommunicator::MeasuredCommunicator;
  void all_gather_counts(std::span<const int64_t> mine, std::span<int64_t> all) override {
    ++count_exchanges;
    inner_.all_gather_counts(mine, all);
  }
  int count_exchanges = 0;

 protected:
  void measure(Collective, Call call) override { call(); }
};

struct Case {
  bool ep;
  MoeExchange exchange;
  bool once;  // counts exchanged once per forward, else once per MoE layer
};

class ModelMoeGroup : public ::testing::TestWithParam<Case> {};

TEST_P(ModelMoeGroup, CountExchangesPerForwardAndLogitsOfOneRank) {
  const Case& k = GetParam();
  const auto dir = test::tiny_model("tiny-qwen3-moe");
  const ModelConfig config = load_model_config(dir);
  const WeightFiles files = WeightFiles::open(dir);
  int moe_layers = 0;
  for (int l = 0; l < config.num_layers; ++l) moe_layers += config.is_moe_layer(l) ? 1 : 0;
  ASSERT_GE(moe_layers, 2) << "the check needs a model with several MoE layers";

  const std::vector<std::vector<int32_t>> tokens = {{3, 17, 42, 99, 7}, {250, 12, 5}};
  auto group = make_thread_group(2);
  std::vector<std::unique_ptr<CountingCommunicator>> counting;
  for (auto& c : group) counting.push_back(std::make_unique<CountingCommunicator>(*c));
  std::vector<std::vector<float>> logits(2);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r)
    ranks.emplace_back([&, r] {
      auto backend = make_cpu_backend();
      ModelShard shard{ParallelConfig{1, 1, 2, k.ep}, 0, 0, r, k.exchange};
      ShardComms comms;
      comms.moe = counting[r].get();
      Model model(config, files, *backend, 64, {}, shard, comms);
      logits[r] = test::logits_alone(model, tokens[r]);
    });
  for (std::thread& t : ranks) t.join();
  for (int r = 0; r < 2; ++r)
    EXPECT_EQ(counting[r]->count_exchanges, k.once ? 1 : moe_layers)
        << "rank " << r << " over " << moe_layers << " MoE layers";

  // The same tokens on one rank holding every expert.
  auto backend = make_cpu_backend();
  Model alone(config, files, *backend, 64);
  for (int r = 0; r < 2; ++r) {
    const std::vector<float> want = test::logits_alone(alone, tokens[r]);
    ASSERT_EQ(want.size(), logits[r].size());
    float worst = 0;
    for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::fabs(want[i] - logits[r][i]));
    EXPECT_LT(worst, 1e-4f) << "rank " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(Exchanges, ModelMoeGroup,
                         ::testing::Values(Case{false, MoeExchange::all_to_all, true},
                                           Case{true, MoeExchange::allgather_reducescatter, true},
                                           Case{true, MoeExchange::all_to_all, false}));

}  // namespace
}  // namespace troupe
