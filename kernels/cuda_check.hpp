// One way to check a CUDA runtime or cuBLAS(Lt) call: TROUPE_CUDA_CHECK(call) throws a
// std::runtime_error naming the call, the file and the line. Kernel launches report a bad
// configuration only through the sticky last error, so every launch is followed by
// TROUPE_CUDA_CHECK_LAUNCH(). Errors of earlier asynchronous work surface at a later call; build with
// -DTROUPE_CUDA_SYNC_LAUNCHES to synchronize after every launch and pin a fault to its kernel.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace troupe::cuda {

[[noreturn]] inline void throw_failure(const char* call, const char* file, int line, const std::string& why) {
  throw std::runtime_error(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " + why);
}

inline void check(cudaError_t status, const char* call, const char* file, int line) {
  if (status == cudaSuccess) return;
  // A failed runtime call also sets the thread's last error; clear it (unless sticky) so that the next
  // launch check does not blame its kernel for this call.
  cudaGetLastError();
  throw_failure(call, file, line, std::string(cudaGetErrorName(status)) + " (" + cudaGetErrorString(status) + ")");
}

inline void check(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  throw_failure(call, file, line,
                std::string(cublasGetStatusName(status)) + " (" + cublasGetStatusString(status) + ")");
}

inline void check_launch(const char* kernel, const char* file, int line) {
  check(cudaGetLastError(), kernel, file, line);
#ifdef TROUPE_CUDA_SYNC_LAUNCHES
  check(cudaDeviceSynchronize(), kernel, file, line);
#endif
}

}  // namespace troupe::cuda

#define TROUPE_CUDA_CHECK(call) ::troupe::cuda::check((call), #call, __FILE__, __LINE__)
#define TROUPE_CUDA_CHECK_LAUNCH(kernel) ::troupe::cuda::check_launch("launch of " #kernel, __FILE__, __LINE__)
