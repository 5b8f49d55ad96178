#include "net/openai_protocol.hpp"

#include <simdjson.h>

#include <boost/archive/iterators/base64_from_binary.hpp>
#include <boost/archive/iterators/transform_width.hpp>
#include <boost/json.hpp>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>

namespace troupe::net {
namespace {

namespace json = boost::json;
using simdjson::dom::element;
using simdjson::dom::element_type;

RequestError bad(std::string message, std::string param) { return RequestError(400, std::move(message), std::move(param)); }

const char* type_name(element e) {
  switch (e.type()) {
    case element_type::ARRAY: return "an array";
    case element_type::OBJECT: return "an object";
    case element_type::INT64:
    case element_type::UINT64: return "an integer";
    case element_type::DOUBLE: return "a number";
    case element_type::STRING: return "a string";
    case element_type::BOOL: return "a boolean";
    case element_type::NULL_VALUE: return "null";
  }
  return "a value";
}

RequestError wrong_type(std::string_view param, std::string_view expected, element e) {
  return bad(std::string(param) + " must be " + std::string(expected) + ", got " + type_name(e), std::string(param));
}

// The parsed body of one request: a JSON object. Absent fields and null read as "not given".
class Body {
 public:
  explicit Body(std::string_view text) {
    element root;
    if (auto error = parser_.parse(text.data(), text.size()).get(root))
      throw bad(std::string("the request body is not valid JSON: ") + simdjson::error_message(error), "");
    if (root.type() != element_type::OBJECT) throw bad(std::string("the request body must be a JSON object, got ") + type_name(root), "");
    object_ = root.get_object().value_unsafe();
  }
  bool is_null(std::string_view key) const {
    element e;
    return !object_.at_key(key).get(e) && e.is_null();
  }
  std::optional<element> get(std::string_view key) const {
    element e;
    if (object_.at_key(key).get(e) || e.is_null()) return std::nullopt;
    return e;
  }

 private:
  simdjson::dom::parser parser_;
  simdjson::dom::object object_;
};

double number(element e, std::string_view param) {
  switch (e.type()) {
    case element_type::INT64: return static_cast<double>(e.get_int64().value_unsafe());
    case element_type::UINT64: return static_cast<double>(e.get_uint64().value_unsafe());
    case element_type::DOUBLE: return e.get_double().value_unsafe();
    default: throw wrong_type(param, "a number", e);
  }
}

// Integers as pydantic's lax mode reads them: 5 and 5.0, not 5.5 or "5".
int64_t integer(element e, std::string_view param, int64_t lo, int64_t hi) {
  int64_t v = 0;
  switch (e.type()) {
    case element_type::INT64: v = e.get_int64().value_unsafe(); break;
    case element_type::UINT64:
      throw bad(std::string(param) + " must be at most " + std::to_string(hi) + ", got " +
                    std::to_string(e.get_uint64().value_unsafe()),
                std::string(param));
    case element_type::DOUBLE: {
      const double d = e.get_double().value_unsafe();
      if (d != std::floor(d)) throw wrong_type(param, "an integer", e);
      // Clamped before the cast (a double beyond int64 has no defined conversion); the range
      // check below then reports it.
      v = d >= 9.0e18 ? std::numeric_limits<int64_t>::max() : d <= -9.0e18 ? std::numeric_limits<int64_t>::min() : static_cast<int64_t>(d);
      break;
    }
    default: throw wrong_type(param, "an integer", e);
  }
  if (v < lo) throw bad(std::string(param) + " must be at least " + std::to_string(lo) + ", got " + std::to_string(v), std::string(param));
  if (v > hi) throw bad(std::string(param) + " must be at most " + std::to_string(hi) + ", got " + std::to_string(v), std::string(param));
  return v;
}

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr int64_t kInt32Min = std::numeric_limits<int32_t>::min();

bool boolean(element e, std::string_view param) {
  if (e.type() != element_type::BOOL) throw wrong_type(param, "a boolean", e);
  return e.get_bool().value_unsafe();
}

std::string string(element e, std::string_view param) {
  if (e.type() != element_type::STRING) throw wrong_type(param, "a string", e);
  return std::string(e.get_string().value_unsafe());
}

std::vector<int32_t> token_ids(simdjson::dom::array a, std::string_view param) {
  std::vector<int32_t> ids;
  ids.reserve(a.size());
  for (element x : a) {
    if (x.type() != element_type::INT64 && x.type() != element_type::UINT64 && x.type() != element_type::DOUBLE)
      throw bad(std::string(param) + " must hold token ids (integers), got " + type_name(x), std::string(param));
    ids.push_back(static_cast<int32_t>(integer(x, param, 0, kInt32Max)));
  }
  return ids;
}

// The OpenAI shapes of `prompt` and embedding `input`: a string, a list of strings, a list of token
// ids, or a list of lists of token ids.
std::vector<Prompt> prompts(element e, std::string_view param) {
  const std::string name(param);
  std::vector<Prompt> out;
  if (e.type() == element_type::STRING) {
    if (e.get_string().value_unsafe().empty()) throw bad(name + " must not be empty", name);
    out.push_back({std::string(e.get_string().value_unsafe()), {}});
    return out;
  }
  if (e.type() != element_type::ARRAY) throw wrong_type(param, "a string, a list of strings or a list of token ids", e);
  simdjson::dom::array a = e.get_array().value_unsafe();
  if (a.size() == 0) throw bad(name + " must not be empty", name);
  if (a.size() > kMaxPrompts) throw bad(name + " holds at most " + std::to_string(kMaxPrompts) + " entries, got " + std::to_string(a.size()), name);
  const element_type first = (*a.begin()).type();
  if (first == element_type::INT64 || first == element_type::UINT64 || first == element_type::DOUBLE) {
    out.push_back({{}, token_ids(a, param)});
    return out;
  }
  for (element x : a) {
    if (first == element_type::STRING && x.type() == element_type::STRING) {
      if (x.get_string().value_unsafe().empty()) throw bad(name + " must not hold empty strings", name);
      out.push_back({std::string(x.get_string().value_unsafe()), {}});
    } else if (first == element_type::ARRAY && x.type() == element_type::ARRAY) {
      std::vector<int32_t> ids = token_ids(x.get_array().value_unsafe(), param);
      if (ids.empty()) throw bad(name + " must not hold empty token lists", name);
      out.push_back({{}, std::move(ids)});
    } else {
      throw bad(name + " must be a string, a list of strings, a list of token ids or a list of lists of token ids", name);
    }
  }
  return out;
}

// simdjson reads; Boost.JSON writes (it escapes). Messages and tools travel to the engine as JSON text.
json::value to_json(element e) {
  switch (e.type()) {
    case element_type::ARRAY: {
      json::array a;
      const simdjson::dom::array elements = e.get_array().value_unsafe();  // a handle: keep it, not the temporary
      for (element x : elements) a.push_back(to_json(x));
      return a;
    }
    case element_type::OBJECT: {
      json::object o;
      const simdjson::dom::object fields = e.get_object().value_unsafe();
      for (auto field : fields) o[field.key] = to_json(field.value);
      return o;
    }
    case element_type::INT64: return e.get_int64().value_unsafe();
    case element_type::UINT64: return e.get_uint64().value_unsafe();
    case element_type::DOUBLE: return e.get_double().value_unsafe();
    case element_type::STRING: return json::string(e.get_string().value_unsafe());
    case element_type::BOOL: return e.get_bool().value_unsafe();
    case element_type::NULL_VALUE: return nullptr;
  }
  return nullptr;
}

bool known_role(std::string_view role) {
  return role == "system" || role == "developer" || role == "user" || role == "assistant" || role == "tool";
}

// Chat messages with their content as one string: text parts are joined with "\n", as vLLM does
// before the chat template sees them.
std::string messages_json(element e) {
  if (e.type() != element_type::ARRAY) throw wrong_type("messages", "a list of messages", e);
  simdjson::dom::array a = e.get_array().value_unsafe();
  if (a.size() == 0) throw bad("messages must not be empty", "messages");
  json::array out;
  out.reserve(a.size());
  for (element m : a) {
    if (m.type() != element_type::OBJECT) throw bad(std::string("each message must be an object, got ") + type_name(m), "messages");
    json::object message = to_json(m).as_object();
    const json::value* role = message.if_contains("role");
    if (!role || !role->is_string()) throw bad("each message needs a \"role\" string", "messages");
    if (!known_role(role->as_string()))
      throw bad("unknown message role '" + std::string(role->as_string()) + "': expected system, developer, user, assistant or tool", "messages");
    json::value* content = message.if_contains("content");
    if (content && content->is_array()) {
      std::string joined;
      bool first = true;
      for (const json::value& part : content->as_array()) {
        const json::object* p = part.if_object();
        const json::value* type = p ? p->if_contains("type") : nullptr;
        if (!type || !type->is_string()) throw bad("each content part must be an object with a \"type\"", "messages");
        if (type->as_string() != "text")
          throw bad("content parts of type '" + std::string(type->as_string()) + "' are not supported: this model takes text", "messages");
        const json::value* text = p->if_contains("text");
        if (!text || !text->is_string()) throw bad("a text content part needs a \"text\" string", "messages");
        if (!first) joined += '\n';
        joined += text->as_string();
        first = false;
      }
      *content = json::string(joined);
    } else if (content && !content->is_string() && !content->is_null()) {
      throw bad("message content must be a string or a list of content parts", "messages");
    }
    out.push_back(std::move(message));
  }
  return json::serialize(out);
}

std::vector<std::string> stop_strings(element e) {
  std::vector<std::string> out;
  if (e.type() == element_type::STRING) {
    out.push_back(std::string(e.get_string().value_unsafe()));
  } else if (e.type() == element_type::ARRAY) {
    const simdjson::dom::array elements = e.get_array().value_unsafe();
    for (element x : elements) out.push_back(string(x, "stop"));
  } else {
    throw wrong_type("stop", "a string or a list of strings", e);
  }
  if (out.size() > static_cast<size_t>(kMaxStopStrings))
    throw bad("stop holds at most " + std::to_string(kMaxStopStrings) + " strings, got " + std::to_string(out.size()), "stop");
  for (const std::string& s : out)
    if (s.empty()) throw bad("stop strings must not be empty", "stop");
  return out;
}

// The fields completions and chat share: sampling, stop, n, streaming.
struct Common {
  std::optional<std::string> model;
  SamplingParams params;
  std::vector<std::string> stop;
  int n = 1;
  bool stream = false;
  bool include_usage = false;
  bool skip_special_tokens = true;
};

void read_max_tokens(const Body& body, std::string_view name, SamplingParams& p) {
  if (auto e = body.get(name)) p.max_tokens = static_cast<int32_t>(integer(*e, name, kInt32Min, kInt32Max));
}

Common common(const Body& body) {
  Common c;
  SamplingParams& p = c.params;
  if (auto e = body.get("model")) c.model = string(*e, "model");
  if (auto e = body.get("temperature")) p.temperature = number(*e, "temperature");
  if (auto e = body.get("top_p")) p.top_p = number(*e, "top_p");
  if (auto e = body.get("top_k")) p.top_k = static_cast<int32_t>(integer(*e, "top_k", kInt32Min, kInt32Max));
  if (auto e = body.get("min_p")) p.min_p = number(*e, "min_p");
  if (auto e = body.get("seed")) p.seed = integer(*e, "seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
  if (auto e = body.get("presence_penalty")) p.presence_penalty = number(*e, "presence_penalty");
  if (auto e = body.get("frequency_penalty")) p.frequency_penalty = number(*e, "frequency_penalty");
  if (auto e = body.get("repetition_penalty")) p.repetition_penalty = number(*e, "repetition_penalty");
  if (auto e = body.get("min_tokens")) p.min_tokens = static_cast<int32_t>(integer(*e, "min_tokens", kInt32Min, kInt32Max));
  if (auto e = body.get("ignore_eos")) p.ignore_eos = boolean(*e, "ignore_eos");
  if (auto e = body.get("stop_token_ids")) {
    if (e->type() != element_type::ARRAY) throw wrong_type("stop_token_ids", "a list of token ids", *e);
    p.stop_token_ids = token_ids(e->get_array().value_unsafe(), "stop_token_ids");
  }
  if (auto e = body.get("stop")) c.stop = stop_strings(*e);
  if (auto e = body.get("n")) c.n = static_cast<int>(integer(*e, "n", 1, kMaxChoices));
  if (auto e = body.get("stream")) c.stream = boolean(*e, "stream");
  if (auto e = body.get("stream_options")) {
    if (!c.stream) throw bad("Stream options can only be defined when `stream=True`.", "stream_options");
    if (e->type() != element_type::OBJECT) throw wrong_type("stream_options", "an object", *e);
    element include;
    if (!e->get_object().value_unsafe().at_key("include_usage").get(include) && !include.is_null())
      c.include_usage = boolean(include, "stream_options.include_usage");
  }
  if (auto e = body.get("skip_special_tokens")) c.skip_special_tokens = boolean(*e, "skip_special_tokens");
  if (auto e = body.get("user")) string(*e, "user");
  return c;
}

// SamplingParams::check() names the parameter first ("temperature must be ..."): that is `param`.
void check_params(const SamplingParams& p, std::string_view max_tokens_name = "max_tokens") {
  auto problem = p.check();
  if (!problem) return;
  std::string param = problem->substr(0, problem->find(' '));
  if (param == "max_tokens" && max_tokens_name != "max_tokens") {
    problem->replace(0, param.size(), max_tokens_name);
    param = max_tokens_name;
  }
  throw bad(*problem, param);
}

std::string chat_extras(const Body& body, std::string_view name, element_type expected, const char* expected_name) {
  auto e = body.get(name);
  if (!e) return {};
  if (e->type() != expected) throw wrong_type(name, expected_name, *e);
  return json::serialize(to_json(*e));
}

}  // namespace

// ---- errors --------------------------------------------------------------------------------------

std::string error_type(int status) {
  switch (status) {
    case 400: return "BadRequestError";
    case 401: return "AuthenticationError";
    case 403: return "PermissionDeniedError";
    case 404: return "NotFoundError";
    case 405: return "MethodNotAllowedError";
    case 413: return "RequestEntityTooLargeError";
    case 429: return "RateLimitError";
    case 431: return "RequestHeaderFieldsTooLargeError";
    case 501: return "NotImplementedError";
    case 503: return "ServiceUnavailableError";
    default: return status >= 500 ? "InternalServerError" : "BadRequestError";
  }
}

std::string error_body(const RequestError& error) {
  json::object e{{"message", error.what()},
                 {"type", error.type().empty() ? error_type(error.status()) : error.type()},
                 {"param", error.param().empty() ? json::value(nullptr) : json::value(error.param())},
                 {"code", error.status()}};
  return json::serialize(json::object{{"error", std::move(e)}});
}

std::string error_body(int status, std::string_view message, std::string_view param) {
  return error_body(RequestError(status, std::string(message), std::string(param), error_type(status)));
}

void check_model(const std::optional<std::string>& requested, std::string_view served) {
  if (requested && *requested != served)
    throw RequestError(404, "The model `" + *requested + "` does not exist.", "model", "NotFoundError");
}

// ---- requests ------------------------------------------------------------------------------------

CompletionRequest parse_completion_request(std::string_view text) {
  Body body(text);
  CompletionRequest r;
  auto prompt = body.get("prompt");
  if (!prompt) throw bad("prompt is required", "prompt");
  r.prompts = prompts(*prompt, "prompt");
  Common c = common(body);
  r.model = std::move(c.model);
  r.params = c.params;
  // 16 when absent, as in OpenAI's API; an explicit null runs to the context length, as in vLLM.
  r.params.max_tokens = 16;
  if (body.is_null("max_tokens")) r.params.max_tokens = std::nullopt;
  read_max_tokens(body, "max_tokens", r.params);
  if (auto e = body.get("logprobs")) r.params.logprobs = static_cast<int32_t>(integer(*e, "logprobs", kInt32Min, kInt32Max));
  if (auto e = body.get("echo"); e && boolean(*e, "echo")) throw bad("echo is not supported", "echo");
  if (auto e = body.get("suffix")) throw bad("suffix is not supported", "suffix");
  r.stop = std::move(c.stop);
  r.n = c.n;
  r.stream = c.stream;
  r.include_usage = c.include_usage;
  r.skip_special_tokens = c.skip_special_tokens;
  check_params(r.params);
  return r;
}

ChatRequest parse_chat_request(std::string_view text) {
  Body body(text);
  ChatRequest r;
  auto messages = body.get("messages");
  if (!messages) throw bad("messages is required", "messages");
  r.messages_json = messages_json(*messages);
  r.tools_json = chat_extras(body, "tools", element_type::ARRAY, "a list of tools");
  r.chat_template_kwargs_json = chat_extras(body, "chat_template_kwargs", element_type::OBJECT, "an object");
  if (auto e = body.get("add_generation_prompt")) r.add_generation_prompt = boolean(*e, "add_generation_prompt");
  Common c = common(body);
  r.model = std::move(c.model);
  r.params = c.params;
  r.params.max_tokens = std::nullopt;
  // max_completion_tokens replaced max_tokens in OpenAI's chat API; vLLM takes either, preferring it.
  std::string_view max_name = "max_tokens";
  read_max_tokens(body, "max_tokens", r.params);
  if (body.get("max_completion_tokens")) {
    max_name = "max_completion_tokens";
    read_max_tokens(body, max_name, r.params);
  }
  if (auto e = body.get("logprobs")) r.logprobs = boolean(*e, "logprobs");
  if (auto e = body.get("top_logprobs")) {
    const int32_t top = static_cast<int32_t>(integer(*e, "top_logprobs", 0, kMaxLogprobs));
    if (top > 0 && !r.logprobs) throw bad("when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs");
    if (r.logprobs) r.params.logprobs = top;
  }
  if (r.logprobs && !r.params.logprobs) r.params.logprobs = 0;
  r.stop = std::move(c.stop);
  r.n = c.n;
  r.stream = c.stream;
  r.include_usage = c.include_usage;
  r.skip_special_tokens = c.skip_special_tokens;
  check_params(r.params, max_name);
  return r;
}

EmbeddingRequest parse_embedding_request(std::string_view text) {
  Body body(text);
  EmbeddingRequest r;
  if (auto e = body.get("model")) r.model = string(*e, "model");
  auto input = body.get("input");
  if (!input) throw bad("input is required", "input");
  for (Prompt& p : prompts(*input, "input")) {
    if (p.text) r.input.texts.push_back(std::move(*p.text));
    else r.input.token_ids.push_back(std::move(*p.ids));
  }
  if (auto e = body.get("encoding_format")) {
    const std::string format = string(*e, "encoding_format");
    if (format != "float" && format != "base64")
      throw bad("encoding_format must be \"float\" or \"base64\", got \"" + format + "\"", "encoding_format");
    r.base64 = format == "base64";
  }
  if (body.get("dimensions")) throw bad("dimensions is not supported: this model has one embedding size", "dimensions");
  if (auto e = body.get("user")) string(*e, "user");
  return r;
}

TokenizeRequest parse_tokenize_request(std::string_view text) {
  Body body(text);
  TokenizeRequest r;
  if (auto e = body.get("model")) r.model = string(*e, "model");
  auto prompt = body.get("prompt");
  auto messages = body.get("messages");
  if (prompt && messages) throw bad("give either prompt or messages, not both", "prompt");
  if (prompt) {
    if (prompt->type() != element_type::STRING) throw wrong_type("prompt", "a string", *prompt);
    r.request.prompt_text = std::string(prompt->get_string().value_unsafe());
  } else if (messages) {
    r.request.messages_json = messages_json(*messages);
    r.request.tools_json = chat_extras(body, "tools", element_type::ARRAY, "a list of tools");
    r.request.chat_template_kwargs_json = chat_extras(body, "chat_template_kwargs", element_type::OBJECT, "an object");
    // vLLM's chat tokenize: the template already holds the special tokens.
    r.add_special_tokens = false;
    if (auto e = body.get("add_generation_prompt")) r.request.add_generation_prompt = boolean(*e, "add_generation_prompt");
  } else {
    throw bad("prompt or messages is required", "prompt");
  }
  if (auto e = body.get("add_special_tokens")) r.add_special_tokens = boolean(*e, "add_special_tokens");
  return r;
}

DetokenizeRequest parse_detokenize_request(std::string_view text) {
  Body body(text);
  DetokenizeRequest r;
  if (auto e = body.get("model")) r.model = string(*e, "model");
  auto tokens = body.get("tokens");
  if (!tokens) throw bad("tokens is required", "tokens");
  if (tokens->type() != element_type::ARRAY) throw wrong_type("tokens", "a list of token ids", *tokens);
  r.tokens = token_ids(tokens->get_array().value_unsafe(), "tokens");
  return r;
}

namespace {

GenerateRequest choice_request(GenerateRequest base, int j) {
  if (base.params.seed) base.params.seed = *base.params.seed + j;
  return base;
}

}  // namespace

std::vector<GenerateRequest> generate_requests(const CompletionRequest& request) {
  std::vector<GenerateRequest> out;
  out.reserve(request.prompts.size() * request.n);
  for (const Prompt& prompt : request.prompts) {
    GenerateRequest base;
    base.prompt_text = prompt.text;
    base.prompt_ids = prompt.ids;
    base.params = request.params;
    base.stop = request.stop;
    base.skip_special_tokens = request.skip_special_tokens;
    for (int j = 0; j < request.n; ++j) out.push_back(choice_request(base, j));
  }
  return out;
}

std::vector<GenerateRequest> generate_requests(const ChatRequest& request) {
  GenerateRequest base;
  base.messages_json = request.messages_json;
  base.tools_json = request.tools_json;
  base.chat_template_kwargs_json = request.chat_template_kwargs_json;
  base.add_generation_prompt = request.add_generation_prompt;
  base.params = request.params;
  base.stop = request.stop;
  base.skip_special_tokens = request.skip_special_tokens;
  std::vector<GenerateRequest> out;
  for (int j = 0; j < request.n; ++j) out.push_back(choice_request(base, j));
  return out;
}

// ---- responses -----------------------------------------------------------------------------------

std::string make_id(std::string_view prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  char hex[33];
  std::snprintf(hex, sizeof hex, "%016llx%016llx", static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(rng()));
  return std::string(prefix) + hex;
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

namespace {

json::object usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"completion_tokens", u.completion_tokens}};
}

json::object envelope(const ResponseMeta& meta, std::string_view object) {
  return {{"id", meta.id}, {"object", object}, {"created", meta.created}, {"model", meta.model}};
}

json::value finish(std::optional<std::string_view> reason) {
  return reason ? json::value(json::string(*reason)) : json::value(nullptr);
}

// Completions style: parallel lists, top_logprobs as {token text: logprob} maps that always hold the
// chosen token (as vLLM's do), offsets into the generated text.
json::object completion_logprobs(const std::vector<LogprobEntry>& entries, CompletionLogprobState& state) {
  json::array tokens, token_logprobs, top_logprobs, offsets;
  for (const LogprobEntry& e : entries) {
    tokens.push_back(json::string(e.chosen.text));
    token_logprobs.push_back(static_cast<double>(e.chosen.logprob));
    json::object top;
    for (const TokenLogprobText& t : e.top) top.emplace(t.text, static_cast<double>(t.logprob));
    top.emplace(e.chosen.text, static_cast<double>(e.chosen.logprob));
    top_logprobs.push_back(std::move(top));
    offsets.push_back(state.text_offset);
    state.text_offset += e.chosen.text.size();
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(token_logprobs)},
          {"top_logprobs", std::move(top_logprobs)},
          {"text_offset", std::move(offsets)}};
}

json::array utf8_bytes(std::string_view text) {
  json::array bytes;
  for (unsigned char c : text) bytes.push_back(c);
  return bytes;
}

json::object chat_logprobs(const std::vector<LogprobEntry>& entries) {
  json::array content;
  for (const LogprobEntry& e : entries) {
    json::array top;
    for (const TokenLogprobText& t : e.top)
      top.push_back(json::object{{"token", t.text}, {"logprob", static_cast<double>(t.logprob)}, {"bytes", utf8_bytes(t.text)}});
    content.push_back(json::object{{"token", e.chosen.text},
                                   {"logprob", static_cast<double>(e.chosen.logprob)},
                                   {"bytes", utf8_bytes(e.chosen.text)},
                                   {"top_logprobs", std::move(top)}});
  }
  return {{"content", std::move(content)}};
}

}  // namespace

std::string completion_response(const ResponseMeta& meta, std::span<const ChoiceResult> choices, bool with_logprobs,
                                const Usage& usage) {
  json::object r = envelope(meta, "text_completion");
  json::array list;
  for (size_t i = 0; i < choices.size(); ++i) {
    CompletionLogprobState offsets;
    list.push_back(json::object{
        {"index", i},
        {"text", choices[i].text},
        {"logprobs", with_logprobs ? json::value(completion_logprobs(choices[i].logprobs, offsets)) : json::value(nullptr)},
        {"finish_reason", choices[i].finish_reason}});
  }
  r["choices"] = std::move(list);
  r["usage"] = usage_json(usage);
  return json::serialize(r);
}

std::string chat_response(const ResponseMeta& meta, std::span<const ChoiceResult> choices, bool with_logprobs,
                          const Usage& usage) {
  json::object r = envelope(meta, "chat.completion");
  json::array list;
  for (size_t i = 0; i < choices.size(); ++i) {
    list.push_back(json::object{
        {"index", i},
        {"message", json::object{{"role", "assistant"}, {"content", choices[i].text}}},
        {"logprobs", with_logprobs ? json::value(chat_logprobs(choices[i].logprobs)) : json::value(nullptr)},
        {"finish_reason", choices[i].finish_reason}});
  }
  r["choices"] = std::move(list);
  r["usage"] = usage_json(usage);
  return json::serialize(r);
}

namespace {

std::string chunk(const ResponseMeta& meta, std::string_view object, json::object choice, bool usage_null) {
  json::object r = envelope(meta, object);
  r["choices"] = json::array{std::move(choice)};
  if (usage_null) r["usage"] = nullptr;
  return json::serialize(r);
}

}  // namespace

std::string completion_chunk(const ResponseMeta& meta, int index, std::string_view text,
                             const std::vector<LogprobEntry>* logprobs, CompletionLogprobState* offsets,
                             std::optional<std::string_view> finish_reason, bool usage_null) {
  json::value lp = nullptr;
  if (logprobs && offsets) lp = completion_logprobs(*logprobs, *offsets);
  return chunk(meta, "text_completion",
               {{"index", index}, {"text", text}, {"logprobs", std::move(lp)}, {"finish_reason", finish(finish_reason)}},
               usage_null);
}

std::string chat_role_chunk(const ResponseMeta& meta, int index, bool usage_null) {
  return chunk(meta, "chat.completion.chunk",
               {{"index", index},
                {"delta", json::object{{"role", "assistant"}, {"content", ""}}},
                {"logprobs", nullptr},
                {"finish_reason", nullptr}},
               usage_null);
}

std::string chat_content_chunk(const ResponseMeta& meta, int index, std::string_view content,
                               const std::vector<LogprobEntry>* logprobs, bool usage_null) {
  return chunk(meta, "chat.completion.chunk",
               {{"index", index},
                {"delta", json::object{{"content", content}}},
                {"logprobs", logprobs ? json::value(chat_logprobs(*logprobs)) : json::value(nullptr)},
                {"finish_reason", nullptr}},
               usage_null);
}

std::string chat_finish_chunk(const ResponseMeta& meta, int index, std::string_view finish_reason, bool usage_null) {
  return chunk(meta, "chat.completion.chunk",
               {{"index", index}, {"delta", json::object{}}, {"logprobs", nullptr}, {"finish_reason", finish_reason}},
               usage_null);
}

std::string usage_chunk(const ResponseMeta& meta, std::string_view object, const Usage& usage) {
  json::object r = envelope(meta, object);
  r["choices"] = json::array{};
  r["usage"] = usage_json(usage);
  return json::serialize(r);
}

std::string base64_floats(std::span<const float> values) {
  static_assert(std::endian::native == std::endian::little, "OpenAI's base64 embeddings are little-endian float32");
  const size_t n = values.size() * sizeof(float);
  // The 6-bit view reads up to two bytes past the end when n is not a multiple of 3: give it zeros.
  std::string bytes(n + 2, '\0');
  std::memcpy(bytes.data(), values.data(), n);
  using namespace boost::archive::iterators;
  using Base64 = base64_from_binary<transform_width<const char*, 6, 8>>;
  std::string out(Base64(bytes.data()), Base64(bytes.data() + n));
  out.append((3 - n % 3) % 3, '=');
  return out;
}

std::string embedding_response(std::string_view model, const std::vector<std::vector<float>>& embeddings, bool base64,
                               int prompt_tokens) {
  json::array data;
  data.reserve(embeddings.size());
  for (size_t i = 0; i < embeddings.size(); ++i) {
    json::value vector;
    if (base64) {
      vector = json::string(base64_floats(embeddings[i]));
    } else {
      json::array a;
      a.reserve(embeddings[i].size());
      for (float f : embeddings[i]) a.push_back(static_cast<double>(f));
      vector = std::move(a);
    }
    data.push_back(json::object{{"object", "embedding"}, {"index", i}, {"embedding", std::move(vector)}});
  }
  json::object r{{"id", make_id("embd-")},
                 {"object", "list"},
                 {"created", unix_now()},
                 {"model", model},
                 {"data", std::move(data)},
                 {"usage", json::object{{"prompt_tokens", prompt_tokens}, {"total_tokens", prompt_tokens}}}};
  return json::serialize(r);
}

namespace {

json::object model_card(const ModelCard& card) {
  return {{"id", card.id},          {"object", "model"}, {"created", card.created},         {"owned_by", "troupe"},
          {"root", card.id},        {"parent", nullptr}, {"max_model_len", card.max_model_len}, {"permission", json::array{}}};
}

}  // namespace

std::string models_response(const ModelCard& card) {
  return json::serialize(json::object{{"object", "list"}, {"data", json::array{model_card(card)}}});
}

std::string model_response(const ModelCard& card) { return json::serialize(model_card(card)); }

std::string tokenize_response(const std::vector<int32_t>& tokens, int max_model_len) {
  return json::serialize(json::object{{"count", tokens.size()},
                                      {"max_model_len", max_model_len},
                                      {"tokens", json::array(tokens.begin(), tokens.end())},
                                      {"token_strs", nullptr}});
}

std::string detokenize_response(std::string_view text) { return json::serialize(json::object{{"prompt", text}}); }

}  // namespace troupe::net
