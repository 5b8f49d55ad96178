// The WebSocket chat protocol (README, "WebSocket chat") as data: client messages parsed and
// validated, server messages written. No sockets here.
//
//   client: {"type":"chat","id":"c1","messages":[...], ...chat completion parameters}
//           {"type":"cancel","id":"c1"}
//   server: {"type":"delta","id":"c1","content":"..."}
//           {"type":"done","id":"c1","finish_reason":"stop","usage":{...}}
//           {"type":"error","id":"c1"|null,"error":{"message","type","param","code"}}
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "net/openai_protocol.hpp"

namespace troupe::net {

inline constexpr size_t kMaxWsIdBytes = 256;

struct WsClientMessage {
  enum class Kind { chat, cancel } kind = Kind::chat;
  std::string id;
  ChatRequest chat;  // kind == chat
};

// A message the server cannot take: the error to send back, with the id when one could be read.
struct WsProtocolError {
  std::optional<std::string> id;
  RequestError error;
};

// Throws WsProtocolError.
WsClientMessage parse_ws_message(std::string_view text);

std::string ws_delta(std::string_view id, std::string_view content);
std::string ws_done(std::string_view id, std::string_view finish_reason, const Usage& usage);
std::string ws_error(const std::optional<std::string>& id, const RequestError& error);

}  // namespace troupe::net
