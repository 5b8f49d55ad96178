#include "actors/runtime_client.hpp"

#include <chrono>

#include "actors/text_pipeline.hpp"

namespace troupe {
namespace {

class RuntimeClient final : public EngineClient {
 public:
  RuntimeClient(RuntimeOptions runtime, ServingOptions serving)
      : serving_(std::move(serving)),
        text_(std::make_shared<TextPipeline>(runtime.model_dir, serving_.chat_template)),
        runtime_(std::move(runtime)),
        created_(std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count()) {
    runtime_.enable_embeddings(text_, serving_.pooling);
  }

  ModelCard model() const override { return {serving_.served_model_name, runtime_.max_model_len(), created_}; }

  uint64_t generate(GenerateRequest request, GenerateListener listener) override {
    if (runtime_.queued() >= serving_.max_queued_requests)
      throw RequestError(503, "The server is overloaded: " + std::to_string(runtime_.queued()) +
                                  " requests are waiting. Retry later.", "", "ServiceUnavailableError");
    return runtime_.submit_text(std::move(request), text_, std::move(listener));
  }

  void abort(uint64_t id) override { runtime_.abort(id); }

  void embed(EmbedRequest request, EmbedListener listener) override { runtime_.embed(std::move(request), std::move(listener)); }

  std::vector<int32_t> tokenize(const GenerateRequest& request, bool add_special_tokens) override {
    return text_->prompt_tokens(request, add_special_tokens);
  }

  std::string detokenize(const std::vector<int32_t>& ids) override {
    for (int32_t id : ids)
      if (id < 0 || id >= runtime_.model_config().vocab_size)
        throw RequestError(400, "Token id " + std::to_string(id) + " is out of vocabulary.", "tokens");
    return text_->tokenizer().decode(ids, false);
  }

  std::string metrics_text() override { return runtime_.metrics_text(); }
  bool healthy() override { return runtime_.healthy(); }

 private:
  ServingOptions serving_;
  std::shared_ptr<TextPipeline> text_;
  Runtime runtime_;
  int64_t created_;
};

}  // namespace

std::unique_ptr<EngineClient> make_runtime_client(RuntimeOptions runtime, ServingOptions serving) {
  if (serving.served_model_name.empty())
    serving.served_model_name = (std::filesystem::absolute(runtime.model_dir) / "").parent_path().filename().string();
  if (runtime.model_name.empty()) runtime.model_name = serving.served_model_name;
  return std::make_unique<RuntimeClient>(std::move(runtime), std::move(serving));
}

}  // namespace troupe
