// What the network layer needs from the engine, and nothing more: the one narrow interface of
// DESIGN.md between net/ and actors/. The real implementation runs requests through the actor
// runtime (request actors tokenize, apply the chat template, detokenize and apply stop strings);
// tests of the HTTP layer implement it with a fake.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/sampler.hpp"

namespace troupe {

// A request the engine refuses: an HTTP status, an OpenAI-style error type, the offending parameter.
class RequestError : public std::runtime_error {
 public:
  RequestError(int status, std::string message, std::string param = {}, std::string type = "BadRequestError")
      : std::runtime_error(std::move(message)), status_(status), param_(std::move(param)), type_(std::move(type)) {}
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& type() const { return type_; }

 private:
  int status_;
  std::string param_;
  std::string type_;
};

// One generation: a completion prompt (text or token ids) or a chat (messages through the template).
struct GenerateRequest {
  std::optional<std::string> prompt_text;
  std::optional<std::vector<int32_t>> prompt_ids;
  std::optional<std::string> messages_json;   // a JSON list of chat messages
  std::string tools_json;                     // a JSON list of tools, or empty
  std::string chat_template_kwargs_json;      // a JSON object (enable_thinking, ...), or empty
  bool add_generation_prompt = true;
  SamplingParams params;                      // max_tokens unset: up to the context length
  std::vector<std::string> stop;              // stop strings, excluded from the output
  bool skip_special_tokens = true;
};

struct TokenLogprobText {
  int32_t token = 0;
  std::string text;
  float logprob = 0.0f;
};

struct LogprobEntry {
  TokenLogprobText chosen;
  std::vector<TokenLogprobText> top;
};

// What a generation's listener hears: text as it becomes final (whole UTF-8 characters, stop
// strings cut off), then one final event with the finish reason and exact usage.
struct GenerateEvent {
  std::string text;
  std::vector<int32_t> token_ids;
  std::vector<LogprobEntry> logprobs;  // one per token, when the request asked for logprobs
  bool final = false;
  std::string finish_reason;  // on the final event: "stop", "length", "abort" or "error"
  std::string error;          // when finish_reason is "error"
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;
};

using GenerateListener = std::function<void(const GenerateEvent&)>;  // any thread; must not block

struct EmbedRequest {
  std::vector<std::string> texts;                // or
  std::vector<std::vector<int32_t>> token_ids;   // one embedding per entry
};

struct EmbedResult {
  std::vector<std::vector<float>> embeddings;  // L2-normalised
  int prompt_tokens = 0;
  std::string error;  // set when it failed
};

using EmbedListener = std::function<void(EmbedResult)>;

struct ModelCard {
  std::string id;       // the served model name
  int max_model_len = 0;
  int64_t created = 0;  // unix seconds
};

class EngineClient {
 public:
  virtual ~EngineClient() = default;

  virtual ModelCard model() const = 0;
  // Starts a generation and returns its id. Throws RequestError for invalid input (unknown
  // parameter values, a prompt plus max_tokens beyond the context, an empty prompt) and for
  // overload (status 503). The listener may be called before generate() returns.
  virtual uint64_t generate(GenerateRequest request, GenerateListener listener) = 0;
  // Stops a generation (its client went away); its final event says "abort". Unknown ids: nothing.
  virtual void abort(uint64_t id) = 0;
  virtual void embed(EmbedRequest request, EmbedListener listener) = 0;

  // What the model sees: the prompt's ids (add_special_tokens as HF's encode) or the chat prompt's.
  virtual std::vector<int32_t> tokenize(const GenerateRequest& request, bool add_special_tokens) = 0;
  virtual std::string detokenize(const std::vector<int32_t>& ids) = 0;

  virtual std::string metrics_text() = 0;  // Prometheus text exposition format
  virtual bool healthy() = 0;
};

}  // namespace troupe
