// The OpenAI-compatible API as data: request bodies parsed and validated into structs, responses and
// stream chunks written as JSON. No sockets here, so every rule is unit-tested with strings.
//
// Validation follows vLLM, whose users bring their requests with them: a bad value is HTTP 400 with
// the parameter's name in `param`; an unknown `model` is 404; unknown fields are ignored; `null`
// means "not given". Every number is range-checked before it reaches the engine.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "actors/client.hpp"

namespace troupe::net {

// Limits of our own, beyond those SamplingParams::check() enforces.
inline constexpr int kMaxChoices = 128;                 // n: one request must not fan out unboundedly
inline constexpr int kMaxStopStrings = 64;
inline constexpr size_t kMaxPrompts = 4096;             // prompts (or embedding inputs) per request

// {"error": {"message", "type", "param", "code"}} as vLLM writes it (code = the HTTP status).
std::string error_body(const RequestError& error);
std::string error_body(int status, std::string_view message, std::string_view param = {});
// The OpenAI error type that goes with a status: 400 BadRequestError, 404 NotFoundError, ...
std::string error_type(int status);

// One prompt of /v1/completions, /v1/embeddings or /tokenize: text, or token ids.
struct Prompt {
  std::optional<std::string> text;
  std::optional<std::vector<int32_t>> ids;
};

struct CompletionRequest {
  std::optional<std::string> model;
  std::vector<Prompt> prompts;  // one choice set per prompt
  SamplingParams params;        // max_tokens defaults to 16, as in OpenAI's and vLLM's completions
  std::vector<std::string> stop;
  int n = 1;
  bool stream = false;
  bool include_usage = false;
  bool skip_special_tokens = true;
};

struct ChatRequest {
  std::optional<std::string> model;
  std::string messages_json;  // the messages, content parts joined into strings
  std::string tools_json;     // empty when absent
  std::string chat_template_kwargs_json;
  bool add_generation_prompt = true;
  SamplingParams params;  // max_tokens unset: up to the context length
  std::vector<std::string> stop;
  int n = 1;
  bool stream = false;
  bool include_usage = false;
  bool logprobs = false;  // chat style: params.logprobs holds top_logprobs when this is set
  bool skip_special_tokens = true;
};

struct EmbeddingRequest {
  std::optional<std::string> model;
  EmbedRequest input;
  bool base64 = false;  // encoding_format "base64": little-endian float32, as OpenAI sends it
};

struct TokenizeRequest {
  std::optional<std::string> model;
  GenerateRequest request;  // prompt_text / prompt_ids, or messages_json (+ tools, kwargs)
  bool add_special_tokens = true;
};

struct DetokenizeRequest {
  std::optional<std::string> model;
  std::vector<int32_t> tokens;
};

// Each throws RequestError (400) naming the parameter; the model name is checked by check_model().
CompletionRequest parse_completion_request(std::string_view body);
ChatRequest parse_chat_request(std::string_view body);
EmbeddingRequest parse_embedding_request(std::string_view body);
TokenizeRequest parse_tokenize_request(std::string_view body);
DetokenizeRequest parse_detokenize_request(std::string_view body);
// 404 "The model `x` does not exist." unless the request named no model or the served one.
void check_model(const std::optional<std::string>& requested, std::string_view served);

// The engine requests of one API request, choice by choice: prompt i's choice j is at index
// i * n + j, and with a seed choice j samples with seed + j so that n > 1 gives different choices.
std::vector<GenerateRequest> generate_requests(const CompletionRequest& request);
std::vector<GenerateRequest> generate_requests(const ChatRequest& request);

// ---- responses -----------------------------------------------------------------------------------

struct ResponseMeta {
  std::string id;  // cmpl-…, chatcmpl-…
  int64_t created = 0;
  std::string model;
};

// A random id with the given prefix, as OpenAI's: "cmpl-" + 32 hex digits.
std::string make_id(std::string_view prefix);
int64_t unix_now();

struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;
};

// What one choice produced, accumulated over its events.
struct ChoiceResult {
  std::string text;
  std::vector<LogprobEntry> logprobs;
  std::string finish_reason;
};

// Completions-style logprobs keep offsets across stream chunks: where the next token's text starts.
struct CompletionLogprobState {
  size_t text_offset = 0;
};

std::string completion_response(const ResponseMeta& meta, std::span<const ChoiceResult> choices,
                                bool with_logprobs, const Usage& usage);
std::string chat_response(const ResponseMeta& meta, std::span<const ChoiceResult> choices, bool with_logprobs,
                          const Usage& usage);

// Stream chunks. `usage_null` writes "usage": null, as OpenAI does on every chunk but the last when
// stream_options.include_usage is set; otherwise the field is left out.
std::string completion_chunk(const ResponseMeta& meta, int index, std::string_view text,
                             const std::vector<LogprobEntry>* logprobs, CompletionLogprobState* offsets,
                             std::optional<std::string_view> finish_reason, bool usage_null);
// The first chunk of a chat choice: {"role": "assistant", "content": ""}.
std::string chat_role_chunk(const ResponseMeta& meta, int index, bool usage_null);
std::string chat_content_chunk(const ResponseMeta& meta, int index, std::string_view content,
                               const std::vector<LogprobEntry>* logprobs, bool usage_null);
// The last chunk of a chat choice: an empty delta and the finish reason.
std::string chat_finish_chunk(const ResponseMeta& meta, int index, std::string_view finish_reason, bool usage_null);
// The usage chunk after all choices: "choices": [] and the request's usage.
std::string usage_chunk(const ResponseMeta& meta, std::string_view object, const Usage& usage);

std::string embedding_response(std::string_view model, const std::vector<std::vector<float>>& embeddings,
                               bool base64, int prompt_tokens);
std::string models_response(const ModelCard& card);
std::string model_response(const ModelCard& card);
std::string tokenize_response(const std::vector<int32_t>& tokens, int max_model_len);
std::string detokenize_response(std::string_view text);

// Little-endian float32 bytes, base64-encoded (OpenAI's encoding_format "base64").
std::string base64_floats(std::span<const float> values);

}  // namespace troupe::net
