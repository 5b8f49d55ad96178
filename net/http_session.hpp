// One HTTP/1.1 connection: keep-alive, pipelined requests answered in order, SSE streams, and the
// hand-over to a WebSocket session on an upgrade to /v1/ws.
#pragma once

#include <boost/asio/ip/tcp.hpp>

#include "net/session_context.hpp"

namespace troupe::net {

void run_http_session(boost::asio::ip::tcp::socket socket, SessionContext& context);

}  // namespace troupe::net
