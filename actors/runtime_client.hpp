// The EngineClient that runs requests on the actor runtime: the one `troupe serve` uses.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "actors/client.hpp"
#include "actors/runtime.hpp"

namespace troupe {

struct ServingOptions {
  std::string served_model_name;                       // default: the model directory's name
  std::optional<std::filesystem::path> chat_template;  // --chat-template FILE
  int max_queued_requests = 1024;  // generate() refuses with 503 beyond this many waiting requests
  std::string pooling = "last";    // embeddings: "last" or "mean"
};

// Builds the runtime (see Runtime's constructor for the errors) and the text pipeline around it.
std::unique_ptr<EngineClient> make_runtime_client(RuntimeOptions runtime, ServingOptions serving);

}  // namespace troupe
