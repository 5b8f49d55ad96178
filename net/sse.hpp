// Server-sent events as the OpenAI streaming API frames them: one `data:` event per chunk, a blank
// line after each, and `data: [DONE]` at the end.
#pragma once

#include <string>
#include <string_view>

namespace troupe::net {

inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";
inline constexpr std::string_view kSseContentType = "text/event-stream; charset=utf-8";

// One event carrying `payload`. A payload with line breaks becomes several `data:` lines, which a
// client joins back with "\n" (the SSE rule); JSON from our writer has none.
std::string sse_event(std::string_view payload);

}  // namespace troupe::net
