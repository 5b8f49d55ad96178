#include <cstdio>

#include "tools/commands.hpp"

namespace troupe {

// Placeholder until the command lands.
int make_model_command(int, char**) {
  std::fprintf(stderr, "troupe make-model: not built yet\n");
  return 1;
}

}  // namespace troupe
