// The real server on loopback against the fake engine: every endpoint, every error status and body,
// SSE framing as curl sees it, keep-alive and pipelining, disconnects that must abort generations,
// limits, the API key, and many concurrent streams.
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <cstdio>
#include <thread>

#include "net/server.hpp"
#include "tests/fake_engine.hpp"
#include "tests/http_test_client.hpp"

namespace troupe::test {
namespace {

namespace json = boost::json;
using namespace std::chrono_literals;

struct ServerFixture {
  FakeEngine engine;
  net::Server server;
  uint16_t port;

  explicit ServerFixture(FakeEngine::Options engine_options = {}, net::ServerOptions options = small_limits())
      : engine(engine_options), server(engine, with_port0(options)), port(server.port()) {
    server.start();
  }
  static net::ServerOptions small_limits() {
    net::ServerOptions o;
    o.max_request_bytes = 64 * 1024;
    o.http_threads = 4;
    return o;
  }
  static net::ServerOptions with_port0(net::ServerOptions o) {
    o.host = "127.0.0.1";
    o.port = 0;
    return o;
  }
  HttpResponse call(std::string_view method, std::string_view target, std::string_view body = {}, std::string_view headers = {}) {
    return http_call(port, method, target, body, headers);
  }
};

json::value body_json(const HttpResponse& r) { return json::parse(r.body); }

// The data payloads of an SSE body, checking the framing on the way: "data: X\n\n" and nothing else.
std::vector<std::string> sse_payloads(const std::string& body) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < body.size()) {
    EXPECT_EQ(body.compare(pos, 6, "data: "), 0) << "at " << pos << " in " << body;
    const size_t end = body.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << body;
    if (end == std::string::npos) break;
    const std::string payload = body.substr(pos + 6, end - pos - 6);
    EXPECT_EQ(payload.find('\n'), std::string::npos);
    out.push_back(payload);
    pos = end + 2;
  }
  return out;
}

void expect_error(const HttpResponse& r, int status, const std::string& message, const std::string& param,
                  const std::string& type, const std::string& what) {
  EXPECT_EQ(r.status, status) << what << ": " << r.body;
  EXPECT_EQ(r.header("content-type"), "application/json") << what;
  json::value e;
  try {
    e = json::parse(r.body);
  } catch (const std::exception&) {
    ADD_FAILURE() << what << ": body is not JSON: " << r.body;
    return;
  }
  ASSERT_TRUE(e.is_object() && e.as_object().contains("error")) << what << ": " << r.body;
  const json::value& err = e.at("error");
  if (!message.empty()) {
    EXPECT_EQ(err.at("message"), json::value(message)) << what;
  }
  if (param.empty()) {
    EXPECT_TRUE(err.at("param").is_null()) << what << ": " << r.body;
  } else {
    EXPECT_EQ(err.at("param"), json::value(param)) << what;
  }
  EXPECT_EQ(err.at("type"), json::value(type)) << what;
  EXPECT_EQ(err.at("code"), status) << what;
}

// ---- endpoints -------------------------------------------------------------------------------------

TEST(HttpServer, ModelsHealthMetricsAndChatPage) {
  ServerFixture s;
  HttpResponse r = s.call("GET", "/v1/models");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("content-type"), "application/json");
  const json::value models = body_json(r);
  EXPECT_EQ(models.at("object"), "list");
  EXPECT_EQ(models.at("data").at(0).at("id"), "fake-model");
  EXPECT_EQ(models.at("data").at(0).at("max_model_len"), 256);
  EXPECT_EQ(body_json(s.call("GET", "/v1/models/fake-model")).at("id"), "fake-model");
  expect_error(s.call("GET", "/v1/models/other"), 404, "The model `other` does not exist.", "model", "NotFoundError", "retrieve");

  r = s.call("GET", "/health");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "");
  s.engine.healthy_flag = false;
  EXPECT_EQ(s.call("GET", "/health").status, 503);

  r = s.call("GET", "/metrics");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_NE(r.body.find("troupe:num_requests_running{model_name=\"fake-model\"} 0"), std::string::npos) << r.body;

  r = s.call("GET", "/");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("content-type"), "text/html; charset=utf-8");
  EXPECT_NE(r.body.find("/v1/ws"), std::string::npos);
  EXPECT_NE(r.body.find("id=\"messages\""), std::string::npos);
}

TEST(HttpServer, CompletionsNonStreaming) {
  ServerFixture s;
  HttpResponse r = s.call("POST", "/v1/completions", R"({"model": "fake-model", "prompt": "abc", "max_tokens": 5})");
  ASSERT_EQ(r.status, 200) << r.body;
  json::value b = body_json(r);
  EXPECT_TRUE(b.at("id").as_string().starts_with("cmpl-"));
  EXPECT_EQ(b.at("object"), "text_completion");
  EXPECT_EQ(b.at("model"), "fake-model");
  EXPECT_EQ(b.at("choices").at(0).at("text"), "abcab");
  EXPECT_EQ(b.at("choices").at(0).at("finish_reason"), "length");
  EXPECT_TRUE(b.at("choices").at(0).at("logprobs").is_null());
  EXPECT_EQ(b.at("usage"), json::parse(R"({"prompt_tokens": 3, "total_tokens": 8, "completion_tokens": 5})"));

  // The engine saw the parameters as sent.
  s.call("POST", "/v1/completions", R"({"prompt": "hello world", "stop": [" "], "max_tokens": 10, "temperature": 0.25,
                                       "top_k": 3, "seed": 9})");
  const GenerateRequest seen = s.engine.requests().back();
  EXPECT_EQ(seen.stop, std::vector<std::string>{" "});
  EXPECT_DOUBLE_EQ(seen.params.temperature, 0.25);
  EXPECT_EQ(seen.params.top_k, 3);
  EXPECT_EQ(seen.params.seed, 9);

  b = body_json(s.call("POST", "/v1/completions", R"({"prompt": "hello world", "stop": " ", "max_tokens": 10})"));
  EXPECT_EQ(b.at("choices").at(0).at("text"), "hello");
  EXPECT_EQ(b.at("choices").at(0).at("finish_reason"), "stop");

  // Two prompts, n = 2: index = prompt * n + choice; each prompt's tokens counted once.
  b = body_json(s.call("POST", "/v1/completions", R"({"prompt": ["xy", "pqr"], "n": 2, "max_tokens": 2})"));
  ASSERT_EQ(b.at("choices").as_array().size(), 4u);
  const char* texts[] = {"xy", "xy", "pq", "pq"};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(b.at("choices").at(i).at("index"), i);
    EXPECT_EQ(b.at("choices").at(i).at("text"), texts[i]);
  }
  EXPECT_EQ(b.at("usage"), json::parse(R"({"prompt_tokens": 5, "total_tokens": 13, "completion_tokens": 8})"));

  // Token-id prompts.
  b = body_json(s.call("POST", "/v1/completions", R"({"prompt": [[0, 1], [2]], "max_tokens": 3})"));
  EXPECT_EQ(b.at("choices").at(0).at("text"), "aba");
  EXPECT_EQ(b.at("choices").at(1).at("text"), "ccc");
  EXPECT_EQ(b.at("usage").at("prompt_tokens"), 3);
}

TEST(HttpServer, CompletionAndChatLogprobs) {
  ServerFixture s;
  json::value b = body_json(s.call("POST", "/v1/completions", R"({"prompt": "ab", "max_tokens": 2, "logprobs": 2})"));
  EXPECT_EQ(b.at("choices").at(0).at("logprobs"),
            json::parse(R"({"tokens": ["a", "b"], "token_logprobs": [-0.25, -0.25],
                            "top_logprobs": [{"a": -0.25, "x1": -2.0}, {"b": -0.25, "x1": -2.0}], "text_offset": [0, 1]})"));
  b = body_json(s.call("POST", "/v1/chat/completions",
                       R"({"messages": [{"role": "user", "content": "a"}], "max_tokens": 1, "logprobs": true, "top_logprobs": 2})"));
  EXPECT_EQ(b.at("choices").at(0).at("logprobs"),
            json::parse(R"({"content": [{"token": "a", "logprob": -0.25, "bytes": [97],
                            "top_logprobs": [{"token": "a", "logprob": -0.25, "bytes": [97]},
                                             {"token": "x1", "logprob": -2.0, "bytes": [120, 49]}]}]})"));
  EXPECT_EQ(s.engine.requests().back().params.logprobs, 2);
}

TEST(HttpServer, ChatNonStreaming) {
  ServerFixture s;
  const HttpResponse r = s.call("POST", "/v1/chat/completions", R"({"model": "fake-model", "max_tokens": 4,
      "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "yo"}]}],
      "chat_template_kwargs": {"enable_thinking": false}, "tools": [{"type": "function", "function": {"name": "f"}}]})");
  ASSERT_EQ(r.status, 200) << r.body;
  const json::value b = body_json(r);
  EXPECT_TRUE(b.at("id").as_string().starts_with("chatcmpl-"));
  EXPECT_EQ(b.at("object"), "chat.completion");
  EXPECT_EQ(b.at("choices").at(0).at("message"), json::parse(R"({"role": "assistant", "content": "hi\ny"})"));
  EXPECT_EQ(b.at("choices").at(0).at("finish_reason"), "length");
  const int prompt = static_cast<int>(std::string("<|system|>be nice<|user|>hi\nyo<|assistant|>").size());
  EXPECT_EQ(b.at("usage").at("prompt_tokens"), prompt);
  EXPECT_EQ(b.at("usage").at("completion_tokens"), 4);
  const GenerateRequest seen = s.engine.requests().back();
  EXPECT_EQ(json::parse(seen.chat_template_kwargs_json), json::parse(R"({"enable_thinking": false})"));
  EXPECT_EQ(json::parse(seen.tools_json).at(0).at("function").at("name"), "f");
}

TEST(HttpServer, ChatStreamingChunkSequence) {
  ServerFixture s;
  const HttpResponse r = s.call("POST", "/v1/chat/completions", R"({"messages": [{"role": "user", "content": "xyz"}],
      "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("content-type"), "text/event-stream; charset=utf-8");
  EXPECT_EQ(r.header("transfer-encoding"), "chunked");
  const auto events = sse_payloads(r.body);
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events.back(), "[DONE]");
  const json::value first = json::parse(events[0]);
  EXPECT_EQ(first.at("object"), "chat.completion.chunk");
  EXPECT_EQ(first.at("choices").at(0).at("delta"), json::parse(R"({"role": "assistant", "content": ""})"));
  std::string text;
  for (size_t i = 1; i + 3 < events.size(); ++i) {
    const json::value c = json::parse(events[i]);
    EXPECT_TRUE(c.at("choices").at(0).at("finish_reason").is_null());
    text += c.at("choices").at(0).at("delta").at("content").as_string();
  }
  EXPECT_EQ(text, "xyzx");
  const json::value finish = json::parse(events[events.size() - 3]);
  EXPECT_EQ(finish.at("choices").at(0).at("delta"), json::object{});
  EXPECT_EQ(finish.at("choices").at(0).at("finish_reason"), "length");
  const json::value usage = json::parse(events[events.size() - 2]);
  EXPECT_EQ(usage.at("choices"), json::array{});
  EXPECT_EQ(usage.at("usage").at("completion_tokens"), 4);
  EXPECT_EQ(usage.at("usage").at("prompt_tokens"), static_cast<int>(std::string("<|user|>xyz<|assistant|>").size()));
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    EXPECT_TRUE(json::parse(events[i]).at("usage").is_null()) << i;
    EXPECT_EQ(json::parse(events[i]).at("id"), first.at("id"));
  }
}

TEST(HttpServer, EmbeddingsTokenizeDetokenize) {
  ServerFixture s;
  json::value b = body_json(s.call("POST", "/v1/embeddings", R"({"input": ["abc", "d"], "model": "fake-model"})"));
  EXPECT_EQ(b.at("object"), "list");
  ASSERT_EQ(b.at("data").as_array().size(), 2u);
  EXPECT_EQ(b.at("data").at(1).at("index"), 1);
  EXPECT_EQ(b.at("data").at(1).at("object"), "embedding");
  const auto& v = b.at("data").at(0).at("embedding").as_array();
  ASSERT_EQ(v.size(), 4u);
  EXPECT_NEAR(v[0].as_double(), 3 / std::sqrt(10.0), 1e-6);
  EXPECT_EQ(b.at("usage"), json::parse(R"({"prompt_tokens": 4, "total_tokens": 4})"));
  b = body_json(s.call("POST", "/v1/embeddings", R"({"input": [[1, 2]], "encoding_format": "base64"})"));
  EXPECT_TRUE(b.at("data").at(0).at("embedding").is_string());
  EXPECT_EQ(b.at("data").at(0).at("embedding").as_string().size(), 24u);  // 16 bytes -> 24 base64 characters
  expect_error(s.call("POST", "/v1/embeddings", R"({"input": "FAIL"})"), 500, "fake embedding failure", "",
               "InternalServerError", "embedding failure");

  b = body_json(s.call("POST", "/tokenize", R"({"prompt": "hi"})"));
  EXPECT_EQ(b.at("tokens"), json::parse("[1, 104, 105]"));
  EXPECT_EQ(b.at("count"), 3);
  EXPECT_EQ(b.at("max_model_len"), 256);
  b = body_json(s.call("POST", "/tokenize", R"({"prompt": "hi", "add_special_tokens": false})"));
  EXPECT_EQ(b.at("count"), 2);
  b = body_json(s.call("POST", "/tokenize", R"({"messages": [{"role": "user", "content": "q"}]})"));
  EXPECT_EQ(b.at("count"), static_cast<int>(std::string("<|user|>q<|assistant|>").size()));
  EXPECT_EQ(body_json(s.call("POST", "/detokenize", R"({"tokens": [104, 105]})")).at("prompt"), "hi");
  expect_error(s.call("POST", "/detokenize", R"({"tokens": [1000]})"), 400, "token id 1000 is out of vocabulary", "tokens",
               "BadRequestError", "detokenize");
}

// ---- SSE framing as curl sees it ---------------------------------------------------------------------

std::string run_curl(uint16_t port, const std::string& path, const std::string& body) {
  const std::string cmd = "curl -sN -X POST -H 'Content-Type: application/json' --data '" + body + "' http://127.0.0.1:" +
                          std::to_string(port) + path;
  FILE* pipe = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  EXPECT_EQ(pclose(pipe), 0) << cmd;
  return out;
}

TEST(HttpServer, CurlSeesExactSseFraming) {
  if (std::system("curl --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "curl is not installed (tools/setup.sh installs it)";
  ServerFixture s;
  const std::string out = run_curl(s.port, "/v1/completions", R"({"prompt": "ab", "max_tokens": 3, "stream": true})");
  // Three chunks (a, b, then a with the finish reason), then [DONE]; each "data: ...\n\n".
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos < out.size()) {
    const size_t end = out.find('\n', pos);
    lines.push_back(out.substr(pos, end - pos));
    pos = end + 1;
  }
  ASSERT_EQ(lines.size(), 8u) << out;
  for (size_t i = 0; i < 8; i += 2) {
    EXPECT_TRUE(lines[i].starts_with("data: ")) << lines[i];
    EXPECT_EQ(lines[i + 1], "") << i;
  }
  EXPECT_EQ(lines[6], "data: [DONE]");
  const char* texts[] = {"a", "b", "a"};
  const json::value first = json::parse(lines[0].substr(6));
  for (int i = 0; i < 3; ++i) {
    const json::value c = json::parse(lines[2 * i].substr(6));
    EXPECT_EQ(c.at("object"), "text_completion");
    EXPECT_EQ(c.at("id"), first.at("id"));
    EXPECT_EQ(c.at("choices").at(0).at("text"), texts[i]);
    EXPECT_EQ(c.at("choices").at(0).at("index"), 0);
    EXPECT_EQ(c.at("choices").at(0).at("finish_reason"), i == 2 ? json::value("length") : json::value(nullptr));
    EXPECT_FALSE(c.as_object().contains("usage"));  // not asked for
  }

  const std::string with_usage = run_curl(
      s.port, "/v1/completions", R"({"prompt": "ab", "max_tokens": 2, "stream": true, "stream_options": {"include_usage": true}})");
  const auto events = sse_payloads(with_usage);
  ASSERT_EQ(events.size(), 4u) << with_usage;
  EXPECT_TRUE(json::parse(events[0]).at("usage").is_null());
  EXPECT_TRUE(json::parse(events[1]).at("usage").is_null());
  EXPECT_EQ(json::parse(events[2]).at("choices"), json::array{});
  EXPECT_EQ(json::parse(events[2]).at("usage"), json::parse(R"({"prompt_tokens": 2, "total_tokens": 4, "completion_tokens": 2})"));
  EXPECT_EQ(events[3], "[DONE]");
}

// ---- errors ----------------------------------------------------------------------------------------

TEST(HttpServer, EveryErrorHasItsStatusAndBody) {
  ServerFixture s;
  struct Case {
    const char* what;
    const char* method;
    const char* path;
    std::string body;
    int status;
    const char* message;  // empty: not checked
    const char* param;
    const char* type;
  } cases[] = {
      {"negative temperature", "POST", "/v1/completions", R"({"prompt": "a", "temperature": -1})", 400,
       "temperature must be non-negative, got -1.0", "temperature", "BadRequestError"},
      {"top_p zero", "POST", "/v1/completions", R"({"prompt": "a", "top_p": 0})", 400, "top_p must be in (0, 1], got 0.0", "top_p",
       "BadRequestError"},
      {"top_p above one", "POST", "/v1/chat/completions", R"({"messages": [{"role": "user", "content": "a"}], "top_p": 1.01})", 400,
       "top_p must be in (0, 1], got 1.01", "top_p", "BadRequestError"},
      {"n zero", "POST", "/v1/completions", R"({"prompt": "a", "n": 0})", 400, "n must be at least 1, got 0", "n", "BadRequestError"},
      {"max_tokens zero", "POST", "/v1/completions", R"({"prompt": "a", "max_tokens": 0})", 400, "max_tokens must be at least 1, got 0",
       "max_tokens", "BadRequestError"},
      {"empty prompt", "POST", "/v1/completions", R"({"prompt": ""})", 400, "prompt must not be empty", "prompt", "BadRequestError"},
      {"empty messages", "POST", "/v1/chat/completions", R"({"messages": []})", 400, "messages must not be empty", "messages",
       "BadRequestError"},
      {"wrong type", "POST", "/v1/completions", R"({"prompt": "a", "max_tokens": "many"})", 400,
       "max_tokens must be an integer, got a string", "max_tokens", "BadRequestError"},
      {"bad JSON", "POST", "/v1/chat/completions", R"({"messages": [)", 400, "", "", "BadRequestError"},
      {"context exceeded", "POST", "/v1/completions", R"({"prompt": "abc", "max_tokens": 300})", 400,
       "'max_tokens' or 'max_completion_tokens' is too large: 300. This model's maximum context length is 256 tokens and your "
       "request has 3 input tokens (300 > 256 - 3).",
       "max_tokens", "BadRequestError"},
      {"unknown model", "POST", "/v1/chat/completions", R"({"model": "gpt-4", "messages": [{"role": "user", "content": "a"}]})", 404,
       "The model `gpt-4` does not exist.", "model", "NotFoundError"},
      {"unknown model, embeddings", "POST", "/v1/embeddings", R"({"model": "x", "input": "a"})", 404, "The model `x` does not exist.",
       "model", "NotFoundError"},
      {"unknown route", "GET", "/v1/nothing", "", 404, "Not Found: /v1/nothing", "", "NotFoundError"},
      {"unknown route, POST", "POST", "/v2/completions", "{}", 404, "Not Found: /v2/completions", "", "NotFoundError"},
      {"GET on a POST route", "GET", "/v1/completions", "", 405, "Method Not Allowed: /v1/completions takes POST", "",
       "MethodNotAllowedError"},
      {"POST on a GET route", "POST", "/v1/models", "{}", 405, "Method Not Allowed: /v1/models takes GET", "", "MethodNotAllowedError"},
      {"plain GET on the WebSocket route", "GET", "/v1/ws", "", 400, "/v1/ws speaks WebSocket: send an Upgrade request", "",
       "BadRequestError"},
      {"body too large", "POST", "/v1/completions", R"({"prompt": ")" + std::string(70000, 'a') + R"("})", 413,
       "Request body too large: the limit is 65536 bytes", "", "RequestEntityTooLargeError"},
  };
  for (const Case& c : cases) {
    const HttpResponse r = s.call(c.method, c.path, c.body);
    expect_error(r, c.status, c.message, c.param, c.type, c.what);
  }
  const HttpResponse r = s.call("GET", "/v1/completions");
  EXPECT_EQ(r.header("allow"), "POST");
  EXPECT_EQ(s.call("DELETE", "/v1/models").header("allow"), "GET");
  EXPECT_EQ(s.engine.requests().size(), 0u);  // nothing invalid reached the engine's queue
}

TEST(HttpServer, OverloadIs503WithRetryAfter) {
  ServerFixture s;
  s.engine.overloaded = true;
  const HttpResponse r = s.call("POST", "/v1/completions", R"({"prompt": "a"})");
  expect_error(r, 503, "The server is overloaded: too many requests are waiting. Retry later.", "", "ServiceUnavailableError",
               "overload");
  EXPECT_EQ(r.header("retry-after"), "1");
}

TEST(HttpServer, LimitsOnHeadersBodiesAndExpectContinue) {
  ServerFixture s;
  // A body over the limit with Expect: 100-continue is refused before the client sends it.
  {
    HttpConnection c(s.port);
    c.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n"
           "Expect: 100-continue\r\n\r\n");
    const HttpResponse r = c.read_response();
    expect_error(r, 413, "Request body too large: the limit is 65536 bytes", "", "RequestEntityTooLargeError", "expect 413");
    EXPECT_EQ(r.header("connection"), "close");
  }
  // Within the limit: 100 Continue, then the answer.
  {
    HttpConnection c(s.port);
    const std::string body = R"({"prompt": "ok", "max_tokens": 2})";
    c.send("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\nExpect: 100-continue\r\n\r\n");
    EXPECT_EQ(c.read_response().status, 100);
    c.send(body);
    const HttpResponse r = c.read_response();
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(body_json(r).at("choices").at(0).at("text"), "ok");
  }
  // A chunked body over the limit is cut off as it streams in.
  {
    HttpConnection c(s.port);
    std::string req = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (int i = 0; i < 20; ++i) req += "1000\r\n" + std::string(4096, ' ') + "\r\n";
    c.send(req);
    EXPECT_EQ(c.read_response().status, 413);
  }
  // Headers over 16 KiB: 431.
  expect_error(s.call("GET", "/v1/models", "", "X-Big: " + std::string(20000, 'a') + "\r\n"), 431,
               "Request headers too large: the limit is 16384 bytes", "", "RequestHeaderFieldsTooLargeError", "431");
  // Not HTTP at all: 400, then the connection is closed.
  {
    HttpConnection c(s.port);
    c.send("HELLO THERE\r\n\r\n");
    const HttpResponse r = c.read_response();
    EXPECT_EQ(r.status, 400);
    EXPECT_TRUE(c.closed_by_peer());
  }
}

TEST(HttpServer, ApiKeyProtectsV1Only) {
  net::ServerOptions o = ServerFixture::small_limits();
  o.api_key = "sesame";
  ServerFixture s({}, o);
  expect_error(s.call("GET", "/v1/models"), 401, "", "", "AuthenticationError", "no key");
  expect_error(s.call("GET", "/v1/models", "", "Authorization: Bearer wrong\r\n"), 401, "", "", "AuthenticationError", "wrong key");
  expect_error(s.call("POST", "/v1/completions", R"({"prompt": "a"})", "Authorization: sesame\r\n"), 401, "", "",
               "AuthenticationError", "no scheme");
  EXPECT_EQ(s.call("GET", "/v1/models", "", "Authorization: Bearer sesame\r\n").status, 200);
  EXPECT_EQ(s.call("POST", "/v1/completions", R"({"prompt": "a", "max_tokens": 1})", "Authorization: Bearer sesame\r\n").status, 200);
  // As in vLLM, only /v1 is protected.
  EXPECT_EQ(s.call("GET", "/health").status, 200);
  EXPECT_EQ(s.call("GET", "/metrics").status, 200);
  EXPECT_EQ(s.call("POST", "/tokenize", R"({"prompt": "a"})").status, 200);
}

TEST(HttpServer, WebSocketUpgradeNeedsTheApiKeyTooByHeaderOrQuery) {
  net::ServerOptions o = ServerFixture::small_limits();
  o.api_key = "sesame";
  ServerFixture s({}, o);
  auto upgrade = [&](const std::string& target, const std::string& extra) {
    HttpConnection c(s.port);
    c.send("GET " + target + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + extra + "\r\n");
    return c.read_response().status;
  };
  EXPECT_EQ(upgrade("/v1/ws", ""), 401);
  EXPECT_EQ(upgrade("/v1/ws?api_key=wrong", ""), 401);
  EXPECT_EQ(upgrade("/v1/ws?api_key=sesame", ""), 101);
  EXPECT_EQ(upgrade("/v1/ws", "Authorization: Bearer sesame\r\n"), 101);
}

// ---- connections -----------------------------------------------------------------------------------

TEST(HttpServer, Http10GetsAnAnswerAndAClose) {
  ServerFixture s;
  HttpConnection c(s.port);
  const std::string body = R"({"prompt": "old", "max_tokens": 3, "stream": true})";
  c.send("POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\n\r\n" + body);
  const HttpResponse r = c.read_response();  // no chunking in HTTP/1.0: the body ends at the close
  EXPECT_EQ(r.status, 200);
  const auto events = sse_payloads(r.body);
  ASSERT_EQ(events.size(), 4u) << r.body;
  EXPECT_EQ(events.back(), "[DONE]");
}

TEST(HttpServer, KeepAliveAndPipelining) {
  ServerFixture s;
  HttpConnection c(s.port);
  for (int i = 0; i < 3; ++i) {
    c.send(http_request_text("POST", "/v1/completions", R"({"prompt": "k)" + std::to_string(i) + R"(", "max_tokens": 2})"));
    const HttpResponse r = c.read_response();
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(body_json(r).at("choices").at(0).at("text"), json::value("k" + std::to_string(i)));
  }
  // Three requests in one write, one of them streaming: answered in order.
  c.send(http_request_text("POST", "/v1/completions", R"({"prompt": "first", "max_tokens": 5})") +
         http_request_text("POST", "/v1/completions", R"({"prompt": "second", "max_tokens": 6, "stream": true})") +
         http_request_text("GET", "/v1/models"));
  HttpResponse r = c.read_response();
  EXPECT_EQ(body_json(r).at("choices").at(0).at("text"), "first");
  r = c.read_response();
  EXPECT_EQ(r.header("content-type"), "text/event-stream; charset=utf-8");
  const auto events = sse_payloads(r.body);
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) text += json::parse(events[i]).at("choices").at(0).at("text").as_string();
  EXPECT_EQ(text, "second");
  r = c.read_response();
  EXPECT_EQ(body_json(r).at("object"), "list");
}

TEST(HttpServer, StreamingClientDisconnectAbortsTheGeneration) {
  ServerFixture s({256, 20ms});
  HttpConnection c(s.port);
  c.send(http_request_text("POST", "/v1/completions", R"({"prompt": "abc", "max_tokens": 200, "stream": true})"));
  c.read_until("data: ");  // the stream is flowing
  c.reset();
  ASSERT_TRUE(s.engine.wait_aborted(1, 5s)) << "the server did not abort the generation of a departed client";
  EXPECT_EQ(s.engine.aborted().size(), 1u);
}

TEST(HttpServer, NonStreamingClientDisconnectAbortsTheGeneration) {
  ServerFixture s({256, 20ms});
  {
    HttpConnection c(s.port);
    c.send(http_request_text("POST", "/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 200})"));
    std::this_thread::sleep_for(100ms);
  }  // closed without reading
  ASSERT_TRUE(s.engine.wait_aborted(1, 5s)) << "the server did not abort the generation of a departed client";
  // n = 3 of one request: every choice aborted.
  {
    HttpConnection c(s.port);
    c.send(http_request_text("POST", "/v1/completions", R"({"prompt": "x", "max_tokens": 200, "n": 3})"));
    std::this_thread::sleep_for(100ms);
    c.reset();
  }
  ASSERT_TRUE(s.engine.wait_aborted(4, 5s));
  EXPECT_EQ(s.engine.aborted().size(), 4u);
}

TEST(HttpServer, EngineFailureMidStreamEndsWithErrorAndDone) {
  ServerFixture s;
  const HttpResponse r = s.call("POST", "/v1/completions", R"({"prompt": "FAIL now", "max_tokens": 10, "stream": true})");
  const auto events = sse_payloads(r.body);
  ASSERT_EQ(events.size(), 3u) << r.body;
  EXPECT_EQ(json::parse(events[0]).at("choices").at(0).at("text"), "F");
  EXPECT_EQ(json::parse(events[1]).at("error").at("message"), "fake engine failure");
  EXPECT_EQ(events[2], "[DONE]");
  expect_error(s.call("POST", "/v1/completions", R"({"prompt": "FAIL", "max_tokens": 10})"), 500, "fake engine failure", "",
               "InternalServerError", "non-stream failure");
}

TEST(HttpServer, SixtyFourConcurrentStreamsAllFinishWithTheirUsage) {
  ServerFixture s({256, 1ms});
  constexpr int kClients = 64;
  std::vector<std::thread> clients;
  std::vector<std::string> failures(kClients);
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      try {
        const std::string prompt = "client " + std::to_string(i) + ";";
        const int max_tokens = 10 + i % 7;
        const std::string body = R"({"messages": [{"role": "user", "content": ")" + prompt + R"("}], "max_tokens": )" +
                                 std::to_string(max_tokens) + R"(, "stream": true, "stream_options": {"include_usage": true}})";
        const HttpResponse r = http_call(s.port, "POST", "/v1/chat/completions", body);
        const auto events = sse_payloads(r.body);
        std::string text;
        for (size_t k = 1; k + 3 < events.size(); ++k)
          text += json::parse(events[k]).at("choices").at(0).at("delta").at("content").as_string();
        std::string expected;
        for (int k = 0; k < max_tokens; ++k) expected += prompt[k % prompt.size()];
        const json::value usage = json::parse(events.at(events.size() - 2)).at("usage");
        const int prompt_tokens = static_cast<int>(("<|user|>" + prompt + "<|assistant|>").size());
        if (text != expected) failures[i] = "text '" + text + "' != '" + expected + "'";
        else if (usage.at("completion_tokens") != max_tokens || usage.at("prompt_tokens") != prompt_tokens)
          failures[i] = "usage " + json::serialize(usage);
        else if (events.back() != "[DONE]") failures[i] = "no [DONE]";
      } catch (const std::exception& e) {
        failures[i] = e.what();
      }
    });
  }
  for (auto& t : clients) t.join();
  for (int i = 0; i < kClients; ++i) EXPECT_EQ(failures[i], "") << "client " << i;
  EXPECT_TRUE(s.engine.wait_finished(kClients, 5s));  // the fake counts a generation after its final event went out
  EXPECT_TRUE(s.engine.aborted().empty());
}

TEST(HttpServer, StopClosesConnectionsAndAbortsTheirGenerations) {
  auto s = std::make_unique<ServerFixture>(FakeEngine::Options{256, 20ms});
  HttpConnection c(s->port);
  c.send(http_request_text("POST", "/v1/completions", R"({"prompt": "abc", "max_tokens": 200, "stream": true})"));
  c.read_until("data: ");
  s->server.stop();
  EXPECT_TRUE(c.closed_by_peer());
  EXPECT_TRUE(s->engine.wait_aborted(1, 5s));
  EXPECT_EQ(s->server.connections(), 0u);
}

}  // namespace
}  // namespace troupe::test
