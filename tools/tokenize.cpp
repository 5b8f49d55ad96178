#include <cstdio>

#include "tools/commands.hpp"

namespace troupe {

// Placeholder until the command lands.
int tokenize_command(int, char**) {
  std::fprintf(stderr, "troupe tokenize: not built yet\n");
  return 1;
}

}  // namespace troupe
