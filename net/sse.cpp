#include "net/sse.hpp"

namespace troupe::net {

std::string sse_event(std::string_view payload) {
  std::string out;
  out.reserve(payload.size() + 8);
  size_t start = 0;
  while (true) {
    // SSE ends a line at CR, LF or CRLF; each line of the payload gets its own field.
    const size_t end = payload.find_first_of("\r\n", start);
    out += "data: ";
    out += payload.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    out += '\n';
    if (end == std::string_view::npos) break;
    start = end + 1;
    if (payload[end] == '\r' && start < payload.size() && payload[start] == '\n') ++start;
  }
  out += '\n';
  return out;
}

}  // namespace troupe::net
