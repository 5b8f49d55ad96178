// What the hardware can do, measured on the device in use: the ceilings benchmarks divide by.
#pragma once

#include "engine/backend.hpp"

namespace troupe {

// Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written (the memory
// roofline of a memory-bound kernel), median of several 1 GiB copies.
double measure_copy_bandwidth(int device);

// Dense bf16 GEMM rate through the backend's linear() (cuBLASLt), in FLOP/s, on an n × n × n
// product of random values, median of several runs.
double measure_gemm_rate(Backend& backend, int n = 8192);

}  // namespace troupe
