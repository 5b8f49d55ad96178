#include <cstdio>

#include "tools/commands.hpp"

namespace troupe {

// Placeholder until the command lands.
int generate_command(int, char**) {
  std::fprintf(stderr, "troupe generate: not built yet\n");
  return 1;
}

}  // namespace troupe
