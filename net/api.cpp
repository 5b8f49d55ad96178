#include "net/api.hpp"

#include "net/chat_page.hpp"

namespace troupe::net {
namespace {

// An /v1/embeddings request: the engine answers once, on one of its threads.
class Embedding : public Pending, public std::enable_shared_from_this<Embedding> {
 public:
  Embedding(std::string model, bool base64) : model_(std::move(model)), base64_(base64) {}

  void start(EngineClient& engine, EmbedRequest request, const Post& post) {
    engine.embed(std::move(request), [self = shared_from_this(), post](EmbedResult result) {
      post([self, result = std::move(result)]() mutable { self->on_result(std::move(result)); });
    });
  }
  bool stream() const override { return false; }
  void begin(Sink sink) override { sink_ = std::move(sink); }
  // The engine has no way to cancel an embedding; its result is dropped.
  void abort() override { sink_ = nullptr; }

 private:
  void on_result(EmbedResult result) {
    if (!sink_) return;
    Sink sink = std::move(sink_);
    if (!result.error.empty()) return sink({500, error_body(500, result.error), true});
    sink({200, embedding_response(model_, result.embeddings, base64_, result.prompt_tokens), true});
  }

  std::string model_;
  bool base64_;
  Sink sink_;
};

bool equal_constant_time(std::string_view a, std::string_view b) {
  // The key's length is not a secret worth hiding; its bytes are.
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

HttpReply json_reply(std::string body) { return {200, "application/json", std::move(body), {}}; }

ApiResult reply(HttpReply r) { return {std::move(r), nullptr}; }

}  // namespace

Api::Api(EngineClient& engine, std::string api_key)
    : engine_(engine), api_key_(std::move(api_key)), model_(engine.model()) {}

std::string_view Api::path_of(std::string_view target) { return target.substr(0, target.find('?')); }

bool Api::authorized(std::string_view path, std::string_view authorization) const {
  if (api_key_.empty() || !path.starts_with("/v1")) return true;
  constexpr std::string_view scheme = "Bearer ";
  return authorization.starts_with(scheme) && equal_constant_time(authorization.substr(scheme.size()), api_key_);
}

HttpReply Api::error_reply(const RequestError& error, bool temporary) {
  HttpReply r{error.status(), "application/json", error_body(error), {}};
  if (error.status() == 503 && temporary) r.headers.emplace_back("Retry-After", "1");
  return r;
}

ApiResult Api::handle(const HttpRequest& request, const Post& post) {
  const std::string_view path = path_of(request.target);
  try {
    if (!authorized(path, request.authorization))
      throw RequestError(401, "Unauthorized: give the API key as `Authorization: Bearer KEY`", "", "AuthenticationError");
    return route(request, path, post);
  } catch (const RequestError& e) {
    return reply(error_reply(e, engine_.healthy()));
  } catch (const std::invalid_argument& e) {
    return reply(error_reply(RequestError(400, e.what())));
  } catch (const std::exception& e) {
    return reply(error_reply(RequestError(500, e.what(), "", "InternalServerError")));
  }
}

ApiResult Api::route(const HttpRequest& request, std::string_view path, const Post& post) {
  const std::string_view method = request.method;
  // Each known path accepts one method; another method is 405 with Allow, an unknown path 404.
  auto expect = [&](std::string_view allowed) {
    if (method != allowed)
      throw RequestError(405, "Method Not Allowed: " + std::string(path) + " takes " + std::string(allowed), "",
                         "MethodNotAllowedError");
  };
  try {
    if (path == "/v1/completions") return expect("POST"), completions(request.body, post);
    if (path == "/v1/chat/completions") return expect("POST"), chat_completions(request.body, post);
    if (path == "/v1/embeddings") return expect("POST"), embeddings(request.body, post);
    if (path == "/tokenize") return expect("POST"), reply(tokenize(request.body));
    if (path == "/detokenize") return expect("POST"), reply(detokenize(request.body));
    if (path == "/v1/models") return expect("GET"), reply(json_reply(models_response(model_)));
    if (path.starts_with("/v1/models/")) {
      expect("GET");
      check_model(std::string(path.substr(std::string_view("/v1/models/").size())), model_.id);
      return reply(json_reply(model_response(model_)));
    }
    if (path == "/health") {
      expect("GET");
      return reply({engine_.healthy() ? 200 : 503, "", "", {}});
    }
    if (path == "/metrics") {
      expect("GET");
      std::string text = engine_.metrics_text();
      return reply({200, "text/plain; version=0.0.4; charset=utf-8", std::move(text), {}});
    }
    if (path == "/") return expect("GET"), reply({200, "text/html; charset=utf-8", std::string(chat_page_html()), {}});
    if (path == "/v1/ws") {
      expect("GET");
      throw RequestError(400, "/v1/ws speaks WebSocket: send an Upgrade request", "", "BadRequestError");
    }
  } catch (RequestError& e) {
    if (e.status() != 405) throw;
    HttpReply r = error_reply(e);
    r.headers.emplace_back("Allow", path == "/" || path.starts_with("/v1/models") || path == "/health" ||
                                            path == "/metrics" || path == "/v1/ws"
                                        ? "GET"
                                        : "POST");
    return reply(std::move(r));
  }
  throw RequestError(404, "Not Found: " + std::string(path), "", "NotFoundError");
}

ApiResult Api::completions(std::string_view body, const Post& post) {
  CompletionRequest request = parse_completion_request(body);
  check_model(request.model, model_.id);
  Generation::Options options{Generation::Api::completion, request.stream, request.include_usage,
                              request.params.logprobs.has_value(), request.n,
                              ResponseMeta{make_id("cmpl-"), unix_now(), model_.id}};
  // Started before the result is built: GCC 12 destroys a partly built braced return value twice
  // when an initializer throws (here, the engine refusing the request).
  auto generation = Generation::start(engine_, std::move(options), generate_requests(request), post);
  return {{}, std::move(generation)};
}

ApiResult Api::chat_completions(std::string_view body, const Post& post) {
  ChatRequest request = parse_chat_request(body);
  check_model(request.model, model_.id);
  Generation::Options options{Generation::Api::chat, request.stream, request.include_usage, request.logprobs, request.n,
                              ResponseMeta{make_id("chatcmpl-"), unix_now(), model_.id}};
  auto generation = Generation::start(engine_, std::move(options), generate_requests(request), post);
  return {{}, std::move(generation)};
}

ApiResult Api::embeddings(std::string_view body, const Post& post) {
  EmbeddingRequest request = parse_embedding_request(body);
  check_model(request.model, model_.id);
  auto job = std::make_shared<Embedding>(model_.id, request.base64);
  job->start(engine_, std::move(request.input), post);
  return {{}, job};
}

HttpReply Api::tokenize(std::string_view body) {
  TokenizeRequest request = parse_tokenize_request(body);
  check_model(request.model, model_.id);
  return json_reply(tokenize_response(engine_.tokenize(request.request, request.add_special_tokens), model_.max_model_len));
}

HttpReply Api::detokenize(std::string_view body) {
  DetokenizeRequest request = parse_detokenize_request(body);
  check_model(request.model, model_.id);
  return json_reply(detokenize_response(engine_.detokenize(request.tokens)));
}

}  // namespace troupe::net
