#include "actors/runtime_client.hpp"

namespace troupe {

std::unique_ptr<EngineClient> make_runtime_client(RuntimeOptions, ServingOptions) {
  throw std::logic_error("make_runtime_client: not built yet");
}

}  // namespace troupe
