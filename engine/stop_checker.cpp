#include "engine/stop_checker.hpp"

#include <algorithm>
#include <utility>

namespace troupe {
namespace {

// Moves `cut` back to the start of the UTF-8 character it falls in.
size_t char_boundary(std::string_view s, size_t cut) {
  while (cut > 0 && cut < s.size() && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return cut;
}

}  // namespace

StopChecker::StopChecker(std::vector<std::string> stops) {
  for (std::string& s : stops)
    if (!s.empty()) stops_.push_back(std::move(s));
}

std::string StopChecker::push(std::string_view text) {
  if (stopped_) return {};
  held_.append(text);
  size_t first = std::string::npos;
  for (const std::string& s : stops_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  if (stops_.empty()) return std::exchange(held_, {});
  // Keep the longest tail that is the start of some stop string (shorter than it), nothing else.
  size_t keep = 0;
  for (const std::string& s : stops_) {
    for (size_t k = std::min(held_.size(), s.size() - 1); k > keep; --k) {
      if (std::string_view(held_).substr(held_.size() - k) == std::string_view(s).substr(0, k)) {
        keep = k;
        break;
      }
    }
  }
  const size_t cut = char_boundary(held_, held_.size() - keep);
  std::string out = held_.substr(0, cut);
  held_.erase(0, cut);
  return out;
}

std::string StopChecker::finish() { return stopped_ ? std::string{} : std::exchange(held_, {}); }

}  // namespace troupe
