// The chat page served at GET /: a static page that talks to /v1/ws (see README, "WebSocket chat").
#pragma once

#include <string_view>

namespace troupe::net {

std::string_view chat_page_html();

}  // namespace troupe::net
