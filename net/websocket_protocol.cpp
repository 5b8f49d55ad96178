#include "net/websocket_protocol.hpp"

#include <simdjson.h>

#include <boost/json.hpp>

namespace troupe::net {
namespace {

namespace json = boost::json;

WsProtocolError error(std::optional<std::string> id, std::string message, std::string param) {
  return {std::move(id), RequestError(400, std::move(message), std::move(param))};
}

}  // namespace

WsClientMessage parse_ws_message(std::string_view text) {
  WsClientMessage m;
  std::string type;
  {
    simdjson::dom::parser parser;
    simdjson::dom::element root;
    if (auto e = parser.parse(text.data(), text.size()).get(root))
      throw error(std::nullopt, std::string("the message is not valid JSON: ") + simdjson::error_message(e), "");
    simdjson::dom::object object;
    if (root.get_object().get(object)) throw error(std::nullopt, "a message must be a JSON object", "");
    std::string_view id;
    if (object.at_key("id").get_string().get(id) || id.empty() || id.size() > kMaxWsIdBytes)
      throw error(std::nullopt, "a message needs an \"id\": a non-empty string of at most " + std::to_string(kMaxWsIdBytes) + " bytes", "id");
    m.id = std::string(id);
    std::string_view t;
    if (object.at_key("type").get_string().get(t)) throw error(m.id, "a message needs a \"type\": \"chat\" or \"cancel\"", "type");
    type = std::string(t);
  }
  if (type == "cancel") {
    m.kind = WsClientMessage::Kind::cancel;
    return m;
  }
  if (type != "chat") throw error(m.id, "unknown message type \"" + type + "\": expected \"chat\" or \"cancel\"", "type");
  try {
    // A chat message carries the chat completion parameters; "type" and "id" are ignored there.
    m.chat = parse_chat_request(text);
  } catch (const RequestError& e) {
    throw WsProtocolError{m.id, e};
  }
  if (m.chat.n != 1) throw error(m.id, "n must be 1 over the WebSocket, got " + std::to_string(m.chat.n), "n");
  if (m.chat.logprobs) throw error(m.id, "logprobs are not sent over the WebSocket; use /v1/chat/completions", "logprobs");
  return m;
}

std::string ws_delta(std::string_view id, std::string_view content) {
  return json::serialize(json::object{{"type", "delta"}, {"id", id}, {"content", content}});
}

std::string ws_done(std::string_view id, std::string_view finish_reason, const Usage& usage) {
  json::object u{{"prompt_tokens", usage.prompt_tokens},
                 {"completion_tokens", usage.completion_tokens},
                 {"total_tokens", usage.prompt_tokens + usage.completion_tokens}};
  return json::serialize(
      json::object{{"type", "done"}, {"id", id}, {"finish_reason", finish_reason}, {"usage", std::move(u)}});
}

std::string ws_error(const std::optional<std::string>& id, const RequestError& error) {
  json::value body = json::parse(error_body(error));
  return json::serialize(json::object{{"type", "error"},
                                      {"id", id ? json::value(json::string(*id)) : json::value(nullptr)},
                                      {"error", body.at("error")}});
}

}  // namespace troupe::net
