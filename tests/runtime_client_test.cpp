// The engine behind the HTTP server: text in (prompt or chat through the template), text out
// (incremental detokenization, stop strings), validation errors, embeddings, overload.
#include <gtest/gtest.h>

#include <cmath>
#include <condition_variable>
#include <future>

#include "actors/runtime_client.hpp"
#include "config/model_config.hpp"
#include "engine/cpu_backend.hpp"
#include "engine/model.hpp"
#include "engine/tokenizer.hpp"
#include "tests/test_support.hpp"

namespace troupe {
namespace {

struct Collected {
  std::string text;
  std::vector<int32_t> ids;
  GenerateEvent final;
};

Collected generate(EngineClient& client, GenerateRequest r) {
  auto done = std::make_shared<std::promise<Collected>>();
  auto acc = std::make_shared<Collected>();
  client.generate(std::move(r), [done, acc](const GenerateEvent& e) {
    acc->text += e.text;
    acc->ids.insert(acc->ids.end(), e.token_ids.begin(), e.token_ids.end());
    if (e.final) {
      acc->final = e;
      done->set_value(*acc);
    }
  });
  return done->get_future().get();
}

std::unique_ptr<EngineClient> client(ServingOptions serving = {}, int max_batched = 2048) {
  RuntimeOptions o;
  o.model_dir = test::tiny_model("tiny-qwen3-chat");
  o.max_model_len = 512;
  o.kv_cache_memory = 16 << 20;
  o.max_num_batched_tokens = max_batched;
  return make_runtime_client(o, serving);
}

GenerateRequest greedy_prompt(const std::string& text, int max_tokens) {
  GenerateRequest r;
  r.prompt_text = text;
  r.params.temperature = 0;
  r.params.max_tokens = max_tokens;
  r.params.ignore_eos = true;
  return r;
}

TEST(RuntimeClient, StreamedTextIsTheDecodeOfTheTokensAndUsageIsExact) {
  auto engine = client();
  const Tokenizer tok = Tokenizer::from_model_dir(test::tiny_model("tiny-qwen3-chat"));
  Collected c = generate(*engine, greedy_prompt("The capital of France is", 24));
  EXPECT_EQ(c.final.finish_reason, "length");
  EXPECT_EQ(c.ids.size(), 24u);
  EXPECT_EQ(c.final.completion_tokens, 24);
  EXPECT_EQ(c.final.prompt_tokens, static_cast<int>(tok.encode("The capital of France is").size()));
  EXPECT_EQ(c.text, tok.decode(c.ids, true));
  EXPECT_EQ(engine->model().id, "tiny-qwen3-chat");
  EXPECT_EQ(engine->model().max_model_len, 512);
}

TEST(RuntimeClient, StopStringEndsGenerationAndIsCutOff) {
  auto engine = client();
  const Collected free_run = generate(*engine, greedy_prompt("Once upon a time", 24));
  ASSERT_GT(free_run.text.size(), 12u);
  // A stop string taken from the middle of what the model writes anyway.
  const size_t at = free_run.text.size() / 2;
  const std::string stop = free_run.text.substr(at, 3);
  GenerateRequest r = greedy_prompt("Once upon a time", 24);
  r.stop = {stop};
  const Collected stopped = generate(*engine, r);
  EXPECT_EQ(stopped.final.finish_reason, "stop");
  EXPECT_EQ(stopped.text, free_run.text.substr(0, free_run.text.find(stop)));
  EXPECT_LT(stopped.final.completion_tokens, 24);
}

TEST(RuntimeClient, ChatGoesThroughTheTemplate) {
  auto engine = client();
  GenerateRequest r;
  r.messages_json = R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}])";
  r.params.temperature = 0;
  r.params.max_tokens = 5;
  r.params.ignore_eos = true;
  const std::vector<int32_t> ids = engine->tokenize(r, false);
  const Tokenizer tok = Tokenizer::from_model_dir(test::tiny_model("tiny-qwen3-chat"));
  EXPECT_EQ(tok.decode(ids),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n");
  const Collected c = generate(*engine, r);
  EXPECT_EQ(c.final.prompt_tokens, static_cast<int>(ids.size()));
  EXPECT_EQ(c.final.completion_tokens, 5);
}

TEST(RuntimeClient, InvalidRequestsAreRefusedWithTheParameterNamed) {
  auto engine = client();
  auto refusal = [&](GenerateRequest r) -> std::pair<int, std::string> {
    try {
      engine->generate(std::move(r), [](const GenerateEvent&) {});
    } catch (const RequestError& e) {
      return {e.status(), e.param() + ": " + e.what()};
    }
    return {0, ""};
  };
  GenerateRequest too_long = greedy_prompt("Hello", 600);
  auto [status, text] = refusal(too_long);
  EXPECT_EQ(status, 400);
  EXPECT_NE(text.find("max_tokens: 'max_tokens' or 'max_completion_tokens' is too large: 600. This model's maximum "
                      "context length is 512 tokens and your request has 1 input tokens (600 > 512 - 1)."),
            std::string::npos)
      << text;
  GenerateRequest cold = greedy_prompt("Hello", 4);
  cold.params.temperature = -1;
  EXPECT_EQ(refusal(cold), std::make_pair(400, std::string("temperature: temperature must be non-negative, got -1.0")));
  GenerateRequest empty;
  empty.prompt_text = "";
  EXPECT_EQ(refusal(empty).first, 400);
}

std::vector<float> embed_one(EngineClient& engine, std::vector<int32_t> ids) {
  std::promise<EmbedResult> p;
  EmbedRequest r;
  r.token_ids = {std::move(ids)};
  engine.embed(r, [&](EmbedResult res) { p.set_value(std::move(res)); });
  EmbedResult res = p.get_future().get();
  EXPECT_EQ(res.error, "");
  return res.embeddings.at(0);
}

// The reference: the model's final-normed hidden states, straight from the CPU backend.
std::vector<float> reference_embedding(const std::vector<int32_t>& ids, bool mean) {
  const auto dir = test::tiny_model("tiny-qwen3-chat");
  auto be = make_cpu_backend();
  Model model(load_model_config(dir), WeightFiles::open(dir), *be, 512);
  KvCache cache = model.allocate_kv_cache(8, 16);
  StepBatch batch;
  std::vector<int32_t> table{0, 1, 2, 3, 4, 5, 6, 7};
  batch.add_sequence(ids, 0, table, Logits::none);
  for (size_t r = mean ? 0 : ids.size() - 1; r < ids.size(); ++r) batch.embed_indices.push_back(static_cast<int32_t>(r));
  Tensor hidden;
  model.forward(batch, cache, {}, &hidden);
  const int h = model.config().hidden_size;
  std::vector<float> rows(batch.embed_indices.size() * h);
  be->download(hidden, rows.data());
  std::vector<double> v(h, 0.0);
  for (size_t r = 0; r < batch.embed_indices.size(); ++r)
    for (int k = 0; k < h; ++k) v[k] += rows[r * h + k] / batch.embed_indices.size();
  double norm = 0;
  for (double x : v) norm += x * x;
  std::vector<float> out(h);
  for (int k = 0; k < h; ++k) out[k] = static_cast<float>(v[k] / std::sqrt(norm));
  return out;
}

TEST(RuntimeClient, EmbeddingsPoolTheFinalHiddenStatesAcrossChunks) {
  std::vector<int32_t> ids;
  for (int i = 0; i < 37; ++i) ids.push_back(1000 + 17 * i);
  for (const std::string pooling : {"last", "mean"}) {
    ServingOptions serving;
    serving.pooling = pooling;
    auto engine = client(serving, /*max_batched=*/8);  // 37 tokens take five chunks
    const std::vector<float> got = embed_one(*engine, ids);
    const std::vector<float> want = reference_embedding(ids, pooling == "mean");
    ASSERT_EQ(got.size(), 64u);
    double worst = 0, norm = 0;
    for (size_t k = 0; k < got.size(); ++k) {
      worst = std::max(worst, static_cast<double>(std::fabs(got[k] - want[k])));
      norm += got[k] * got[k];
    }
    EXPECT_NEAR(norm, 1.0, 1e-5) << pooling;
    EXPECT_LT(worst, 1e-5) << pooling;
  }
}

TEST(RuntimeClient, OverloadIsRefusedWith503) {
  ServingOptions serving;
  serving.max_queued_requests = 2;
  auto engine = client(serving);
  int refused = 0;
  std::vector<uint64_t> ids;
  for (int i = 0; i < 40; ++i) {
    try {
      ids.push_back(engine->generate(greedy_prompt("overload " + std::to_string(i), 100), [](const GenerateEvent&) {}));
    } catch (const RequestError& e) {
      EXPECT_EQ(e.status(), 503);
      ++refused;
    }
  }
  EXPECT_GT(refused, 0);
  for (uint64_t id : ids) engine->abort(id);
}

}  // namespace
}  // namespace troupe
