// The OpenAI protocol as strings: every parameter parsed, every validation error's status, message
// and param, the JSON shapes of responses and stream chunks, and how a Generation turns engine
// events into chunk sequences (with a scripted engine and a hand-run strand). No sockets.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <deque>
#include <functional>

#include "net/generation.hpp"
#include "net/openai_protocol.hpp"
#include "net/sse.hpp"
#include "net/websocket_protocol.hpp"

namespace troupe::net {
namespace {

namespace json = boost::json;

struct Rejection {
  int status = 0;
  std::string message, param, type;
};

template <class F>
Rejection rejection(F&& f) {
  try {
    f();
  } catch (const RequestError& e) {
    return {e.status(), e.what(), e.param(), e.type()};
  }
  return {};
}

Rejection completion_error(const std::string& body) { return rejection([&] { parse_completion_request(body); }); }
Rejection chat_error(const std::string& body) { return rejection([&] { parse_chat_request(body); }); }

// ---- /v1/completions requests ----------------------------------------------------------------------

TEST(CompletionRequest, ReadsEveryParameter) {
  const CompletionRequest r = parse_completion_request(R"({
    "model": "m", "prompt": "Hello", "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "top_k": 40,
    "min_p": 0.1, "seed": 7, "stop": ["a", "bc"], "n": 2, "presence_penalty": 0.5, "frequency_penalty": -0.5,
    "repetition_penalty": 1.2, "logprobs": 3, "stream": true, "stream_options": {"include_usage": true},
    "user": "u1", "min_tokens": 2, "ignore_eos": true, "stop_token_ids": [5, 6], "skip_special_tokens": false,
    "some_future_field": {"x": [1, 2]}})");
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0].text, "Hello");
  EXPECT_EQ(r.params.max_tokens, 5);
  EXPECT_DOUBLE_EQ(r.params.temperature, 0.5);
  EXPECT_DOUBLE_EQ(r.params.top_p, 0.9);
  EXPECT_EQ(r.params.top_k, 40);
  EXPECT_DOUBLE_EQ(r.params.min_p, 0.1);
  EXPECT_EQ(r.params.seed, 7);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"a", "bc"}));
  EXPECT_EQ(r.n, 2);
  EXPECT_DOUBLE_EQ(r.params.presence_penalty, 0.5);
  EXPECT_DOUBLE_EQ(r.params.frequency_penalty, -0.5);
  EXPECT_DOUBLE_EQ(r.params.repetition_penalty, 1.2);
  EXPECT_EQ(r.params.logprobs, 3);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(r.params.min_tokens, 2);
  EXPECT_TRUE(r.params.ignore_eos);
  EXPECT_EQ(r.params.stop_token_ids, (std::vector<int32_t>{5, 6}));
  EXPECT_FALSE(r.skip_special_tokens);
}

TEST(CompletionRequest, DefaultsAreOpenAIs) {
  const CompletionRequest r = parse_completion_request(R"({"prompt": "x", "temperature": null, "stop": "\n"})");
  EXPECT_FALSE(r.model);
  EXPECT_EQ(r.params.max_tokens, 16);
  EXPECT_DOUBLE_EQ(r.params.temperature, 1.0);  // null means "not given"
  EXPECT_EQ(r.n, 1);
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.include_usage);
  EXPECT_FALSE(r.params.logprobs);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n"}));
  // An explicit null max_tokens runs to the context length, as in vLLM.
  EXPECT_FALSE(parse_completion_request(R"({"prompt": "x", "max_tokens": null})").params.max_tokens);
}

TEST(CompletionRequest, PromptShapes) {
  auto strings = parse_completion_request(R"({"prompt": ["a", "b"]})").prompts;
  ASSERT_EQ(strings.size(), 2u);
  EXPECT_EQ(strings[1].text, "b");
  auto ids = parse_completion_request(R"({"prompt": [1, 2, 2147483647]})").prompts;
  ASSERT_EQ(ids.size(), 1u);
  EXPECT_EQ(ids[0].ids, (std::vector<int32_t>{1, 2, 2147483647}));
  auto lists = parse_completion_request(R"({"prompt": [[1], [2, 3]]})").prompts;
  ASSERT_EQ(lists.size(), 2u);
  EXPECT_EQ(lists[1].ids, (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(parse_completion_request(R"({"prompt": [5.0]})").prompts[0].ids, (std::vector<int32_t>{5}));
}

TEST(CompletionRequest, RejectsBadPrompts) {
  struct Case {
    const char* body;
    const char* message;
  } cases[] = {
      {R"({})", "prompt is required"},
      {R"({"prompt": ""})", "prompt must not be empty"},
      {R"({"prompt": []})", "prompt must not be empty"},
      {R"({"prompt": ["a", ""]})", "prompt must not hold empty strings"},
      {R"({"prompt": [[1], []]})", "prompt must not hold empty token lists"},
      {R"({"prompt": [1, "a"]})", "prompt must hold token ids (integers), got a string"},
      {R"({"prompt": ["a", 1]})", "prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids"},
      {R"({"prompt": [-1]})", "prompt must be at least 0, got -1"},
      {R"({"prompt": [2147483648]})", "prompt must be at most 2147483647, got 2147483648"},
      {R"({"prompt": 5})", "prompt must be a string, a list of strings or a list of token ids, got an integer"},
  };
  for (const Case& c : cases) {
    const Rejection r = completion_error(c.body);
    EXPECT_EQ(r.status, 400) << c.body;
    EXPECT_EQ(r.param, "prompt") << c.body;
    EXPECT_EQ(r.message, c.message) << c.body;
  }
}

TEST(CompletionRequest, RejectsOutOfRangeValuesNamingTheParameter) {
  struct Case {
    const char* field;
    const char* param;
    const char* message;
  } cases[] = {
      {R"("temperature": -1)", "temperature", "temperature must be non-negative, got -1.0"},
      {R"("top_p": 0)", "top_p", "top_p must be in (0, 1], got 0.0"},
      {R"("top_p": 1.5)", "top_p", "top_p must be in (0, 1], got 1.5"},
      {R"("top_k": -2)", "top_k", "top_k must be -1 or 0 (disabled), or at least 1, got -2"},
      {R"("min_p": 2)", "min_p", "min_p must be in [0, 1], got 2.0"},
      {R"("presence_penalty": 3)", "presence_penalty", "presence_penalty must be in [-2, 2], got 3.0"},
      {R"("frequency_penalty": -2.5)", "frequency_penalty", "frequency_penalty must be in [-2, 2], got -2.5"},
      {R"("repetition_penalty": 0)", "repetition_penalty", "repetition_penalty must be greater than zero, got 0.0"},
      {R"("max_tokens": 0)", "max_tokens", "max_tokens must be at least 1, got 0"},
      {R"("max_tokens": -5)", "max_tokens", "max_tokens must be at least 1, got -5"},
      {R"("max_tokens": 1e20)", "max_tokens", "max_tokens must be at most 2147483647, got 9223372036854775807"},
      {R"("max_tokens": 3000000000)", "max_tokens", "max_tokens must be at most 2147483647, got 3000000000"},
      {R"("max_tokens": 2.5)", "max_tokens", "max_tokens must be an integer, got a number"},
      {R"("n": 0)", "n", "n must be at least 1, got 0"},
      {R"("n": 129)", "n", "n must be at most 128, got 129"},
      {R"("logprobs": 21)", "logprobs", "logprobs must be in [0, 20], got 21"},
      {R"("logprobs": -1)", "logprobs", "logprobs must be in [0, 20], got -1"},
      {R"("min_tokens": -1)", "min_tokens", "min_tokens must be non-negative, got -1"},
      {R"("seed": 18446744073709551615)", "seed", "seed must be at most 9223372036854775807, got 18446744073709551615"},
      {R"("stop_token_ids": [-3])", "stop_token_ids", "stop_token_ids must be at least 0, got -3"},
      {R"("temperature": "hot")", "temperature", "temperature must be a number, got a string"},
      {R"("stream": "yes")", "stream", "stream must be a boolean, got a string"},
      {R"("stop": 5)", "stop", "stop must be a string or a list of strings, got an integer"},
      {R"("stop": [""])", "stop", "stop strings must not be empty"},
      {R"("model": 5)", "model", "model must be a string, got an integer"},
      {R"("stream_options": {"include_usage": true})", "stream_options", "Stream options can only be defined when `stream=True`."},
      {R"("echo": true)", "echo", "echo is not supported"},
  };
  for (const Case& c : cases) {
    const std::string body = std::string(R"({"prompt": "x", )") + c.field + "}";
    const Rejection r = completion_error(body);
    EXPECT_EQ(r.status, 400) << body;
    EXPECT_EQ(r.param, c.param) << body;
    EXPECT_EQ(r.message, c.message) << body;
    EXPECT_EQ(r.type, "BadRequestError") << body;
  }
}

TEST(CompletionRequest, RejectsBodiesThatAreNotJsonObjects) {
  Rejection r = completion_error("{\"prompt\": ");
  EXPECT_EQ(r.status, 400);
  EXPECT_TRUE(r.message.starts_with("the request body is not valid JSON")) << r.message;
  r = completion_error("[1, 2]");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.message, "the request body must be a JSON object, got an array");
  EXPECT_EQ(completion_error("").status, 400);
}

TEST(CompletionRequest, OneEngineRequestPerPromptAndChoiceWithSeedsOffset) {
  const CompletionRequest r =
      parse_completion_request(R"({"prompt": ["a", "b"], "n": 2, "seed": 10, "stop": ".", "max_tokens": 3})");
  const auto requests = generate_requests(r);
  ASSERT_EQ(requests.size(), 4u);
  // Prompt i's choice j sits at i * n + j.
  EXPECT_EQ(requests[0].prompt_text, "a");
  EXPECT_EQ(requests[1].prompt_text, "a");
  EXPECT_EQ(requests[2].prompt_text, "b");
  EXPECT_EQ(requests[0].params.seed, 10);
  EXPECT_EQ(requests[1].params.seed, 11);
  EXPECT_EQ(requests[3].params.seed, 11);
  EXPECT_EQ(requests[3].stop, std::vector<std::string>{"."});
  EXPECT_EQ(requests[3].params.max_tokens, 3);
}

TEST(ModelCheck, UnknownModelIs404WithVllmsText) {
  EXPECT_NO_THROW(check_model(std::nullopt, "served"));
  EXPECT_NO_THROW(check_model(std::string("served"), "served"));
  const Rejection r = rejection([] { check_model(std::string("gpt-4"), "served"); });
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.message, "The model `gpt-4` does not exist.");
  EXPECT_EQ(r.param, "model");
  EXPECT_EQ(r.type, "NotFoundError");
}

// ---- /v1/chat/completions requests -------------------------------------------------------------------

TEST(ChatRequest, ReadsMessagesToolsAndParameters) {
  const ChatRequest r = parse_chat_request(R"({
    "model": "m",
    "messages": [{"role": "system", "content": "Be brief."},
                 {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
                 {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function",
                   "function": {"name": "f", "arguments": "{}"}}]},
                 {"role": "tool", "content": "42", "tool_call_id": "t1"}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "chat_template_kwargs": {"enable_thinking": false},
    "max_completion_tokens": 9, "max_tokens": 100, "temperature": 0, "logprobs": true, "top_logprobs": 4,
    "stream": true, "stream_options": {"include_usage": false}, "n": 3})");
  const json::array messages = json::parse(r.messages_json).as_array();
  ASSERT_EQ(messages.size(), 4u);
  EXPECT_EQ(messages[1].at("content"), "one\ntwo");  // text parts joined as vLLM joins them
  EXPECT_TRUE(messages[2].at("content").is_null());
  EXPECT_EQ(messages[2].at("tool_calls").at(0).at("id"), "t1");  // other fields pass through
  EXPECT_EQ(messages[3].at("tool_call_id"), "t1");
  EXPECT_EQ(json::parse(r.tools_json).at(0).at("function").at("name"), "f");
  EXPECT_EQ(json::parse(r.chat_template_kwargs_json).at("enable_thinking"), false);
  EXPECT_EQ(r.params.max_tokens, 9);  // max_completion_tokens wins over max_tokens
  EXPECT_TRUE(r.params.greedy());
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.params.logprobs, 4);
  EXPECT_TRUE(r.stream);
  EXPECT_FALSE(r.include_usage);
  EXPECT_EQ(r.n, 3);
  EXPECT_TRUE(r.add_generation_prompt);
  const auto requests = generate_requests(r);
  ASSERT_EQ(requests.size(), 3u);
  EXPECT_EQ(requests[2].messages_json, r.messages_json);
  EXPECT_EQ(requests[2].tools_json, r.tools_json);
  EXPECT_FALSE(requests[2].prompt_text);
}

TEST(ChatRequest, DefaultsRunToTheContextAndNoLogprobs) {
  const ChatRequest r = parse_chat_request(R"({"messages": [{"role": "user", "content": "hi"}]})");
  EXPECT_FALSE(r.params.max_tokens);
  EXPECT_FALSE(r.params.logprobs);
  EXPECT_TRUE(r.tools_json.empty());
  EXPECT_TRUE(r.chat_template_kwargs_json.empty());
  EXPECT_EQ(parse_chat_request(R"({"messages": [{"role": "user", "content": "hi"}], "logprobs": true})").params.logprobs, 0);
}

TEST(ChatRequest, RejectsBadMessagesAndParameters) {
  struct Case {
    const char* body;
    const char* param;
    const char* message;
  } cases[] = {
      {R"({})", "messages", "messages is required"},
      {R"({"messages": []})", "messages", "messages must not be empty"},
      {R"({"messages": "hi"})", "messages", "messages must be a list of messages, got a string"},
      {R"({"messages": [5]})", "messages", "each message must be an object, got an integer"},
      {R"({"messages": [{"content": "hi"}]})", "messages", "each message needs a \"role\" string"},
      {R"({"messages": [{"role": "wizard", "content": "hi"}]})", "messages",
       "unknown message role 'wizard': expected system, developer, user, assistant or tool"},
      {R"({"messages": [{"role": "user", "content": 5}]})", "messages", "message content must be a string or a list of content parts"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})", "messages",
       "content parts of type 'image_url' are not supported: this model takes text"},
      {R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", "top_logprobs",
       "when using `top_logprobs`, `logprobs` must be set to true."},
      {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21})", "top_logprobs",
       "top_logprobs must be at most 20, got 21"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0})", "max_completion_tokens",
       "max_completion_tokens must be at least 1, got 0"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1})", "max_tokens", "max_tokens must be at least 1, got -1"},
      {R"({"messages": [{"role": "user", "content": "x"}], "tools": {}})", "tools", "tools must be a list of tools, got an object"},
      {R"({"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": []})", "chat_template_kwargs",
       "chat_template_kwargs must be an object, got an array"},
      {R"({"messages": [{"role": "user", "content": "x"}], "temperature": -0.5})", "temperature",
       "temperature must be non-negative, got -0.5"},
  };
  for (const Case& c : cases) {
    const Rejection r = chat_error(c.body);
    EXPECT_EQ(r.status, 400) << c.body;
    EXPECT_EQ(r.param, c.param) << c.body;
    EXPECT_EQ(r.message, c.message) << c.body;
  }
}

// ---- embeddings, tokenize, detokenize ------------------------------------------------------------------

TEST(EmbeddingRequest, InputShapesAndEncoding) {
  EmbeddingRequest r = parse_embedding_request(R"({"input": ["a", "bc"], "model": "m", "encoding_format": "base64"})");
  EXPECT_EQ(r.input.texts, (std::vector<std::string>{"a", "bc"}));
  EXPECT_TRUE(r.base64);
  r = parse_embedding_request(R"({"input": [[1, 2], [3]]})");
  EXPECT_EQ(r.input.token_ids.size(), 2u);
  EXPECT_FALSE(r.base64);
  EXPECT_EQ(parse_embedding_request(R"({"input": "x"})").input.texts, std::vector<std::string>{"x"});
  Rejection e = rejection([] { parse_embedding_request(R"({"input": "x", "encoding_format": "hex"})"); });
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "encoding_format");
  EXPECT_EQ(e.message, "encoding_format must be \"float\" or \"base64\", got \"hex\"");
  e = rejection([] { parse_embedding_request(R"({"input": ""})"); });
  EXPECT_EQ(e.param, "input");
  EXPECT_EQ(e.message, "input must not be empty");
  e = rejection([] { parse_embedding_request(R"({"input": "x", "dimensions": 8})"); });
  EXPECT_EQ(e.param, "dimensions");
}

TEST(TokenizeRequest, PromptOrMessages) {
  TokenizeRequest r = parse_tokenize_request(R"({"prompt": "hi"})");
  EXPECT_EQ(r.request.prompt_text, "hi");
  EXPECT_TRUE(r.add_special_tokens);
  r = parse_tokenize_request(R"({"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": false})");
  EXPECT_TRUE(r.request.messages_json);
  EXPECT_FALSE(r.add_special_tokens);  // vLLM's chat tokenize: the template holds the special tokens
  EXPECT_FALSE(r.request.add_generation_prompt);
  r = parse_tokenize_request(R"({"prompt": "hi", "add_special_tokens": false})");
  EXPECT_FALSE(r.add_special_tokens);
  EXPECT_EQ(rejection([] { parse_tokenize_request(R"({})"); }).message, "prompt or messages is required");
  EXPECT_EQ(parse_detokenize_request(R"({"tokens": [1, 2]})").tokens, (std::vector<int32_t>{1, 2}));
  const Rejection e = rejection([] { parse_detokenize_request(R"({"tokens": [1, -2]})"); });
  EXPECT_EQ(e.param, "tokens");
  EXPECT_EQ(e.message, "tokens must be at least 0, got -2");
}

// ---- responses -------------------------------------------------------------------------------------

const ResponseMeta meta{"cmpl-1", 1234, "m"};

TEST(Responses, ErrorBodyIsOpenAIsShape) {
  const json::value e = json::parse(error_body(RequestError(400, "top_p must be in (0, 1], got 0.0", "top_p")));
  EXPECT_EQ(e, json::parse(R"({"error": {"message": "top_p must be in (0, 1], got 0.0", "type": "BadRequestError",
                                          "param": "top_p", "code": 400}})"));
  const json::value n = json::parse(error_body(404, "Not Found: /x"));
  EXPECT_EQ(n.at("error").at("type"), "NotFoundError");
  EXPECT_TRUE(n.at("error").at("param").is_null());
  EXPECT_EQ(n.at("error").at("code"), 404);
}

TEST(Responses, CompletionShapeWithUsage) {
  const std::vector<ChoiceResult> choices{{"Hello", {}, "length"}, {"Hi", {}, "stop"}};
  const json::value r = json::parse(completion_response(meta, choices, false, Usage{3, 7, 0}));
  EXPECT_EQ(r, json::parse(R"({"id": "cmpl-1", "object": "text_completion", "created": 1234, "model": "m",
    "choices": [{"index": 0, "text": "Hello", "logprobs": null, "finish_reason": "length"},
                {"index": 1, "text": "Hi", "logprobs": null, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "total_tokens": 10, "completion_tokens": 7}})"));
}

TEST(Responses, CompletionLogprobsAreParallelListsWithOffsets) {
  ChoiceResult c{"ab", {}, "length"};
  c.logprobs.push_back({{97, "a", -0.5f}, {{98, "b", -0.25f}}});
  c.logprobs.push_back({{98, "b", -0.25f}, {{98, "b", -0.25f}}});
  const json::value r = json::parse(completion_response(meta, std::vector<ChoiceResult>{c}, true, Usage{1, 2, 0}));
  EXPECT_EQ(r.at("choices").at(0).at("logprobs"), json::parse(R"({"tokens": ["a", "b"], "token_logprobs": [-0.5, -0.25],
    "top_logprobs": [{"b": -0.25, "a": -0.5}, {"b": -0.25}], "text_offset": [0, 1]})"));
}

TEST(Responses, ChatShapeAndChatLogprobs) {
  ChoiceResult c{"é", {}, "stop"};
  c.logprobs.push_back({{1, "é", -1.0f}, {{1, "é", -1.0f}, {2, "x", -2.0f}}});
  const json::value r = json::parse(chat_response({"chatcmpl-1", 5, "m"}, std::vector<ChoiceResult>{c}, true, Usage{4, 1, 0}));
  EXPECT_EQ(r, json::parse(R"({"id": "chatcmpl-1", "object": "chat.completion", "created": 5, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "é"},
                 "logprobs": {"content": [{"token": "é", "logprob": -1.0, "bytes": [195, 169],
                   "top_logprobs": [{"token": "é", "logprob": -1.0, "bytes": [195, 169]},
                                    {"token": "x", "logprob": -2.0, "bytes": [120]}]}]},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 4, "total_tokens": 5, "completion_tokens": 1}})"));
}

TEST(Responses, StreamChunks) {
  EXPECT_EQ(json::parse(completion_chunk(meta, 2, "ab", nullptr, nullptr, std::nullopt, false)),
            json::parse(R"({"id": "cmpl-1", "object": "text_completion", "created": 1234, "model": "m",
              "choices": [{"index": 2, "text": "ab", "logprobs": null, "finish_reason": null}]})"));
  // With include_usage every chunk but the usage chunk says "usage": null.
  const json::value last = json::parse(completion_chunk(meta, 0, "", nullptr, nullptr, "length", true));
  EXPECT_EQ(last.at("choices").at(0).at("finish_reason"), "length");
  EXPECT_TRUE(last.at("usage").is_null());
  EXPECT_EQ(json::parse(chat_role_chunk(meta, 0, false)).at("choices").at(0).at("delta"),
            json::parse(R"({"role": "assistant", "content": ""})"));
  const json::value content = json::parse(chat_content_chunk(meta, 1, "hi", nullptr, false));
  EXPECT_EQ(content.at("object"), "chat.completion.chunk");
  EXPECT_EQ(content.at("choices").at(0), json::parse(R"({"index": 1, "delta": {"content": "hi"}, "logprobs": null, "finish_reason": null})"));
  EXPECT_FALSE(content.as_object().contains("usage"));
  EXPECT_EQ(json::parse(chat_finish_chunk(meta, 0, "stop", false)).at("choices").at(0),
            json::parse(R"({"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"})"));
  EXPECT_EQ(json::parse(usage_chunk(meta, "chat.completion.chunk", Usage{2, 3, 0})),
            json::parse(R"({"id": "cmpl-1", "object": "chat.completion.chunk", "created": 1234, "model": "m", "choices": [],
              "usage": {"prompt_tokens": 2, "total_tokens": 5, "completion_tokens": 3}})"));
}

TEST(Responses, StreamedCompletionLogprobOffsetsContinueAcrossChunks) {
  CompletionLogprobState offsets;
  const std::vector<LogprobEntry> first{{{1, "ab", -1.0f}, {}}};
  const std::vector<LogprobEntry> second{{{2, "c", -1.0f}, {}}};
  completion_chunk(meta, 0, "ab", &first, &offsets, std::nullopt, false);
  const json::value r = json::parse(completion_chunk(meta, 0, "c", &second, &offsets, std::nullopt, false));
  EXPECT_EQ(r.at("choices").at(0).at("logprobs").at("text_offset"), json::parse("[2]"));
}

TEST(Responses, EmbeddingsFloatAndBase64) {
  const std::vector<std::vector<float>> e{{1.0f, 0.5f}, {0.0f, -2.0f}};
  const json::value f = json::parse(embedding_response("m", e, false, 7));
  EXPECT_EQ(f.at("object"), "list");
  EXPECT_EQ(f.at("model"), "m");
  EXPECT_EQ(f.at("data").at(1), json::parse(R"({"object": "embedding", "index": 1, "embedding": [0.0, -2.0]})"));
  EXPECT_EQ(f.at("usage"), json::parse(R"({"prompt_tokens": 7, "total_tokens": 7})"));
  const json::value b = json::parse(embedding_response("m", e, true, 7));
  // 1.0f = 00 00 80 3f, 0.5f = 00 00 00 3f (little-endian).
  EXPECT_EQ(b.at("data").at(0).at("embedding"), "AACAPwAAAD8=");
  EXPECT_EQ(base64_floats(std::vector<float>{1.0f}), "AACAPw==");
  EXPECT_EQ(base64_floats(std::vector<float>{}), "");
}

TEST(Responses, ModelsTokenizeDetokenize) {
  const json::value m = json::parse(models_response({"served", 4096, 99}));
  EXPECT_EQ(m.at("object"), "list");
  EXPECT_EQ(m.at("data").at(0).at("id"), "served");
  EXPECT_EQ(m.at("data").at(0).at("object"), "model");
  EXPECT_EQ(m.at("data").at(0).at("max_model_len"), 4096);
  EXPECT_EQ(m.at("data").at(0).at("created"), 99);
  const json::value t = json::parse(tokenize_response({5, 6, 7}, 4096));
  EXPECT_EQ(t.at("count"), 3);
  EXPECT_EQ(t.at("max_model_len"), 4096);
  EXPECT_EQ(t.at("tokens"), json::parse("[5, 6, 7]"));
  EXPECT_EQ(json::parse(detokenize_response("a\"b")).at("prompt"), "a\"b");
  EXPECT_TRUE(make_id("cmpl-").starts_with("cmpl-"));
  EXPECT_EQ(make_id("cmpl-").size(), 5u + 32u);
  EXPECT_NE(make_id("x"), make_id("x"));
}

TEST(Sse, FramesEventsAndDone) {
  EXPECT_EQ(sse_event(R"({"a":1})"), "data: {\"a\":1}\n\n");
  EXPECT_EQ(sse_event("one\ntwo\r\nthree"), "data: one\ndata: two\ndata: three\n\n");
  EXPECT_EQ(kSseDone, "data: [DONE]\n\n");
}

// ---- WebSocket messages ----------------------------------------------------------------------------

TEST(WebsocketProtocol, ParsesChatAndCancel) {
  const WsClientMessage chat = parse_ws_message(
      R"({"type": "chat", "id": "c1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0})");
  EXPECT_EQ(chat.kind, WsClientMessage::Kind::chat);
  EXPECT_EQ(chat.id, "c1");
  EXPECT_EQ(chat.chat.params.max_tokens, 4);
  EXPECT_TRUE(chat.chat.params.greedy());
  const WsClientMessage cancel = parse_ws_message(R"({"type": "cancel", "id": "c1"})");
  EXPECT_EQ(cancel.kind, WsClientMessage::Kind::cancel);
  EXPECT_EQ(cancel.id, "c1");
}

TEST(WebsocketProtocol, ErrorsCarryTheIdWhenKnown) {
  auto error_of = [](const std::string& text) -> WsProtocolError {
    try {
      parse_ws_message(text);
    } catch (const WsProtocolError& e) {
      return e;
    }
    return {std::string("no error"), RequestError(0, "")};
  };
  WsProtocolError e = error_of("not json");
  EXPECT_FALSE(e.id);
  EXPECT_EQ(e.error.status(), 400);
  e = error_of(R"({"type": "chat"})");
  EXPECT_FALSE(e.id);
  EXPECT_EQ(e.error.param(), "id");
  e = error_of(R"({"type": "sing", "id": "c2"})");
  EXPECT_EQ(e.id, "c2");
  EXPECT_EQ(std::string(e.error.what()), "unknown message type \"sing\": expected \"chat\" or \"cancel\"");
  e = error_of(R"({"type": "chat", "id": "c3", "messages": [{"role": "user", "content": "x"}], "temperature": -1})");
  EXPECT_EQ(e.id, "c3");
  EXPECT_EQ(e.error.param(), "temperature");
  e = error_of(R"({"type": "chat", "id": "c4", "messages": [{"role": "user", "content": "x"}], "n": 2})");
  EXPECT_EQ(e.error.param(), "n");
  e = error_of(R"({"type": "chat", "id": ")" + std::string(300, 'x') + R"(", "messages": []})");
  EXPECT_EQ(e.error.param(), "id");
}

TEST(WebsocketProtocol, ServerMessages) {
  EXPECT_EQ(json::parse(ws_delta("c1", "hé")), json::parse(R"({"type": "delta", "id": "c1", "content": "hé"})"));
  EXPECT_EQ(json::parse(ws_done("c1", "abort", Usage{3, 2, 0})),
            json::parse(R"({"type": "done", "id": "c1", "finish_reason": "abort",
                            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})"));
  EXPECT_EQ(json::parse(ws_error(std::nullopt, RequestError(400, "bad", "x"))),
            json::parse(R"({"type": "error", "id": null, "error": {"message": "bad", "type": "BadRequestError", "param": "x", "code": 400}})"));
}

// ---- Generation: engine events to responses ------------------------------------------------------

// An engine that keeps each listener so the test plays the events, and a strand run by hand.
class ScriptedEngine : public EngineClient {
 public:
  ModelCard model() const override { return {"m", 100, 0}; }
  uint64_t generate(GenerateRequest request, GenerateListener listener) override {
    if (fail_at && listeners.size() == *fail_at) throw RequestError(400, "too long", "max_tokens");
    requests.push_back(std::move(request));
    listeners.push_back(std::move(listener));
    return 100 + listeners.size() - 1;
  }
  void abort(uint64_t id) override { aborted.push_back(id); }
  void embed(EmbedRequest, EmbedListener) override {}
  std::vector<int32_t> tokenize(const GenerateRequest&, bool) override { return {}; }
  std::string detokenize(const std::vector<int32_t>&) override { return {}; }
  std::string metrics_text() override { return {}; }
  bool healthy() override { return true; }

  std::optional<size_t> fail_at;
  std::vector<GenerateRequest> requests;
  std::vector<GenerateListener> listeners;
  std::vector<uint64_t> aborted;
};

GenerateEvent text_event(std::string text) {
  GenerateEvent e;
  e.text = std::move(text);
  return e;
}

GenerateEvent final_event(std::string reason, int prompt, int completion, std::string text = "") {
  GenerateEvent e;
  e.text = std::move(text);
  e.final = true;
  e.finish_reason = std::move(reason);
  e.prompt_tokens = prompt;
  e.completion_tokens = completion;
  return e;
}

struct Harness {
  ScriptedEngine engine;
  std::deque<std::function<void()>> strand;
  std::vector<Output> outputs;
  Post post = [this](std::function<void()> f) { strand.push_back(std::move(f)); };

  std::shared_ptr<Generation> start(Generation::Options options, size_t choices) {
    std::vector<GenerateRequest> requests(choices);
    auto g = Generation::start(engine, std::move(options), std::move(requests), post);
    g->begin([this](Output o) { outputs.push_back(std::move(o)); });
    return g;
  }
  void play(size_t choice, const GenerateEvent& e) {
    engine.listeners[choice](e);
    while (!strand.empty()) {
      auto f = std::move(strand.front());
      strand.pop_front();
      f();
    }
  }
  // The SSE events written so far, each as its data payload.
  std::vector<std::string> events() const {
    std::vector<std::string> out;
    std::string all;
    for (const Output& o : outputs) all += o.data;
    size_t pos = 0;
    while (pos < all.size()) {
      const size_t end = all.find("\n\n", pos);
      EXPECT_EQ(all.compare(pos, 6, "data: "), 0);
      out.push_back(all.substr(pos + 6, end - pos - 6));
      pos = end + 2;
    }
    return out;
  }
};

TEST(Generation, ChatStreamIsRoleContentFinishUsageDone) {
  Harness h;
  h.start({Generation::Api::chat, true, true, false, 1, {"chatcmpl-9", 1, "m"}}, 1);
  h.play(0, text_event("Hel"));
  h.play(0, text_event(""));  // nothing to say: no chunk
  h.play(0, final_event("stop", 4, 2, "lo"));
  const auto events = h.events();
  ASSERT_EQ(events.size(), 6u);
  EXPECT_EQ(json::parse(events[0]).at("choices").at(0).at("delta"), json::parse(R"({"role": "assistant", "content": ""})"));
  EXPECT_EQ(json::parse(events[1]).at("choices").at(0).at("delta").at("content"), "Hel");
  EXPECT_EQ(json::parse(events[2]).at("choices").at(0).at("delta").at("content"), "lo");
  EXPECT_EQ(json::parse(events[3]).at("choices").at(0).at("finish_reason"), "stop");
  EXPECT_EQ(json::parse(events[3]).at("choices").at(0).at("delta"), json::object{});
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_TRUE(json::parse(events[i]).at("usage").is_null()) << i;
    EXPECT_EQ(json::parse(events[i]).at("id"), "chatcmpl-9") << i;
  }
  EXPECT_EQ(json::parse(events[4]).at("choices"), json::array{});
  EXPECT_EQ(json::parse(events[4]).at("usage"), json::parse(R"({"prompt_tokens": 4, "total_tokens": 6, "completion_tokens": 2})"));
  EXPECT_EQ(events[5], "[DONE]");
  EXPECT_TRUE(h.outputs.back().last);
  EXPECT_TRUE(h.engine.aborted.empty());
}

TEST(Generation, CompletionStreamIndexesChoicesAndCountsEachPromptOnce) {
  Harness h;
  // Two prompts, n = 2: choices 0, 1 (prompt 0) and 2, 3 (prompt 1).
  h.start({Generation::Api::completion, true, true, false, 2, {"cmpl-2", 1, "m"}}, 4);
  h.play(3, text_event("d"));
  h.play(0, final_event("length", 5, 1, "a"));
  h.play(1, final_event("length", 5, 1, "b"));
  h.play(2, final_event("stop", 7, 0));
  h.play(3, final_event("length", 7, 2, "e"));
  const auto events = h.events();
  ASSERT_EQ(events.size(), 7u);
  std::vector<int> indexes;
  for (size_t i = 0; i < 5; ++i) indexes.push_back(static_cast<int>(json::parse(events[i]).at("choices").at(0).at("index").as_int64()));
  EXPECT_EQ(indexes, (std::vector<int>{3, 0, 1, 2, 3}));
  EXPECT_EQ(json::parse(events[0]).at("choices").at(0).at("finish_reason"), nullptr);
  EXPECT_EQ(json::parse(events[1]).at("choices").at(0).at("text"), "a");
  EXPECT_EQ(json::parse(events[1]).at("choices").at(0).at("finish_reason"), "length");
  EXPECT_EQ(json::parse(events[3]).at("choices").at(0).at("text"), "");  // a final event without text still ends its choice
  EXPECT_EQ(json::parse(events[5]).at("usage"), json::parse(R"({"prompt_tokens": 12, "total_tokens": 16, "completion_tokens": 4})"));
  EXPECT_EQ(events[6], "[DONE]");
}

TEST(Generation, StreamWithoutIncludeUsageHasNoUsageAnywhere) {
  Harness h;
  h.start({Generation::Api::completion, true, false, false, 1, {"cmpl-3", 1, "m"}}, 1);
  h.play(0, final_event("length", 1, 1, "x"));
  const auto events = h.events();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_FALSE(json::parse(events[0]).as_object().contains("usage"));
  EXPECT_EQ(events[1], "[DONE]");
}

TEST(Generation, NonStreamCollectsChoicesInIndexOrder) {
  Harness h;
  h.start({Generation::Api::completion, false, false, false, 1, {"cmpl-4", 1, "m"}}, 2);
  h.play(1, text_event("B"));
  h.play(0, text_event("A"));
  h.play(1, final_event("stop", 2, 1));
  EXPECT_TRUE(h.outputs.empty());  // nothing until every choice is done
  h.play(0, final_event("length", 3, 2, "a"));
  ASSERT_EQ(h.outputs.size(), 1u);
  EXPECT_EQ(h.outputs[0].status, 200);
  EXPECT_TRUE(h.outputs[0].last);
  const json::value r = json::parse(h.outputs[0].data);
  EXPECT_EQ(r.at("choices").at(0).at("text"), "Aa");
  EXPECT_EQ(r.at("choices").at(1).at("text"), "B");
  EXPECT_EQ(r.at("choices").at(1).at("finish_reason"), "stop");
  EXPECT_EQ(r.at("usage"), json::parse(R"({"prompt_tokens": 5, "total_tokens": 8, "completion_tokens": 3})"));
}

TEST(Generation, EngineErrorMidStreamSendsErrorThenDoneAndAbortsTheRest) {
  Harness h;
  h.start({Generation::Api::chat, true, false, false, 2, {"c", 1, "m"}}, 2);
  h.play(0, text_event("x"));
  GenerateEvent failed = final_event("error", 1, 1);
  failed.error = "device lost";
  h.play(1, failed);
  h.play(0, text_event("late"));  // ignored: the response is over
  const auto events = h.events();
  ASSERT_EQ(events.size(), 5u);  // two role chunks, "x", the error, [DONE]
  EXPECT_EQ(json::parse(events[3]).at("error").at("message"), "device lost");
  EXPECT_EQ(json::parse(events[3]).at("error").at("code"), 500);
  EXPECT_EQ(events[4], "[DONE]");
  EXPECT_EQ(h.engine.aborted, std::vector<uint64_t>{100});
}

TEST(Generation, EngineErrorWithoutStreamIs500) {
  Harness h;
  h.start({Generation::Api::completion, false, false, false, 1, {"c", 1, "m"}}, 1);
  GenerateEvent failed = final_event("error", 1, 0);
  failed.error = "out of KV blocks";
  h.play(0, failed);
  ASSERT_EQ(h.outputs.size(), 1u);
  EXPECT_EQ(h.outputs[0].status, 500);
  EXPECT_EQ(json::parse(h.outputs[0].data).at("error").at("message"), "out of KV blocks");
}

TEST(Generation, ClientLeavingAbortsUnfinishedChoicesAndSilencesOutput) {
  Harness h;
  auto g = h.start({Generation::Api::completion, true, false, false, 1, {"c", 1, "m"}}, 3);
  h.play(1, final_event("length", 1, 1, "z"));
  const size_t written = h.outputs.size();
  g->abort();
  EXPECT_EQ(h.engine.aborted, (std::vector<uint64_t>{100, 102}));
  h.play(0, final_event("abort", 1, 0));
  EXPECT_EQ(h.outputs.size(), written);
  g->abort();  // twice is harmless
  EXPECT_EQ(h.engine.aborted.size(), 2u);
}

TEST(Generation, RefusalOfOneChoiceAbortsTheOnesStarted) {
  Harness h;
  h.engine.fail_at = 2;
  const Rejection r = rejection([&] { h.start({Generation::Api::completion, false, false, false, 3, {"c", 1, "m"}}, 3); });
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.param, "max_tokens");
  EXPECT_EQ(h.engine.aborted, (std::vector<uint64_t>{100, 101}));
}

TEST(Generation, LogprobsFlowIntoChunks) {
  Harness h;
  h.start({Generation::Api::completion, true, false, true, 1, {"c", 1, "m"}}, 1);
  GenerateEvent e = text_event("ab");
  e.logprobs.push_back({{1, "a", -0.5f}, {}});
  e.logprobs.push_back({{2, "b", -1.5f}, {}});
  h.play(0, e);
  h.play(0, final_event("length", 1, 2));
  const json::value lp = json::parse(h.events()[0]).at("choices").at(0).at("logprobs");
  EXPECT_EQ(lp.at("tokens"), json::parse(R"(["a", "b"])"));
  EXPECT_EQ(lp.at("token_logprobs"), json::parse("[-0.5, -1.5]"));
  EXPECT_EQ(lp.at("text_offset"), json::parse("[0, 1]"));
}

}  // namespace
}  // namespace troupe::net
