// Measurement switches read from the environment, for host code and kernel files alike: a fast path
// stays on unless its variable turns it off, so that a run can measure what the path is worth.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace troupe::cuda {

// On unless the environment sets NAME=0. Callers keep the answer in a static or a member.
inline bool switched_on(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr || std::strcmp(v, "0") != 0;
}

// The integer NAME holds, or `otherwise` where it is unset.
inline int64_t switch_value(const char* name, int64_t otherwise) {
  const char* v = std::getenv(name);
  return v ? std::atoll(v) : otherwise;
}

}  // namespace troupe::cuda
