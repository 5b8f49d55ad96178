// The HTTP API without sockets: routes, the API key, and each endpoint's work against the engine.
// A request comes in as method, target, Authorization header and body; a reply goes out as status,
// content type and body, or as a Pending result that the session feeds to the client as it comes.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "actors/client.hpp"
#include "net/generation.hpp"

namespace troupe::net {

struct HttpRequest {
  std::string_view method;  // "GET", "POST", ...
  std::string_view target;  // path and query
  std::string_view authorization;
  std::string_view body;
};

struct HttpReply {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // Retry-After, Allow
};

struct ApiResult {
  HttpReply reply;                   // when pending is null
  std::shared_ptr<Pending> pending;  // a generation or an embedding under way
};

class Api {
 public:
  Api(EngineClient& engine, std::string api_key);

  // Routes one request. Never throws: every failure is an OpenAI-style error reply.
  ApiResult handle(const HttpRequest& request, const Post& post);

  // Whether a request may use `path`: with an API key, every /v1 route needs `Bearer KEY` (as vLLM).
  bool authorized(std::string_view path, std::string_view authorization) const;

  EngineClient& engine() { return engine_; }
  const ModelCard& model() const { return model_; }

  // `temporary`: a 503 says when to retry (overload passes; a failed engine does not come back).
  static HttpReply error_reply(const RequestError& error, bool temporary = true);
  static std::string_view path_of(std::string_view target);

 private:
  ApiResult route(const HttpRequest& request, std::string_view path, const Post& post);
  ApiResult completions(std::string_view body, const Post& post);
  ApiResult chat_completions(std::string_view body, const Post& post);
  ApiResult embeddings(std::string_view body, const Post& post);
  HttpReply tokenize(std::string_view body);
  HttpReply detokenize(std::string_view body);

  EngineClient& engine_;
  std::string api_key_;
  ModelCard model_;
};

}  // namespace troupe::net
