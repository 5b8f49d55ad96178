// The reference backend: f32 everywhere, plain loops, obviously correct. Tests compare every other
// backend with it, and CI runs every layout on it.
#pragma once

#include <memory>

#include "engine/backend.hpp"

namespace troupe {

struct CpuBackendOptions {
  // Claim to fuse a sublayer's residual add into its last projection (Backend::fuses_residual_add),
  // computing it as the two ops: the model then takes the path the CUDA backend's decode steps take,
  // so that tests check that path's wiring against the reference's usual one, on the CPU.
  bool fuse_residual_add = false;
};

std::unique_ptr<Backend> make_cpu_backend(CpuBackendOptions options = {});

}  // namespace troupe
