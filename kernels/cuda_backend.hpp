// Entry points of the CUDA backend that the worker (and tests) use; the rest stays inside kernels/.
#pragma once

#include <memory>

#include "engine/backend.hpp"

struct CUstream_st;  // cudaStream_t, without the CUDA headers

namespace troupe {

// GPUs usable by this process; 0 when there is no driver or no device (never throws).
int cuda_device_count();

// A backend bound to one device: bf16 weights and activations, f32 accumulation.
std::unique_ptr<Backend> make_cuda_backend(int device);

// The device and stream of a backend that make_cuda_backend made, for work that must run in order
// with its ops (kernels/gpu_sampler.hpp). Throws std::invalid_argument for any other backend.
struct CudaStream {
  int device;
  CUstream_st* stream;
};
CudaStream cuda_stream_of(const Backend& backend);

}  // namespace troupe
