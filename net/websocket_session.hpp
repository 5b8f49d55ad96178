// One WebSocket connection speaking the chat protocol of websocket_protocol.hpp: several
// conversations in flight, each streamed as deltas, cancellable; closing aborts them all.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <string>

#include "net/session_context.hpp"

namespace troupe::net {

// Takes over a connection whose HTTP upgrade request (its raw header text) was already read.
void run_websocket_session(boost::asio::ip::tcp::socket socket, std::string upgrade_request, SessionContext& context);

}  // namespace troupe::net
