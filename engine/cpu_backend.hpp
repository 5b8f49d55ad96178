// The reference backend: f32 everywhere, plain loops, obviously correct. Tests compare every other
// backend with it, and CI runs every layout on it.
#pragma once

#include <memory>

#include "engine/backend.hpp"

namespace troupe {

std::unique_ptr<Backend> make_cpu_backend();

}  // namespace troupe
