// The kernels of a pushed all-reduce (engine/pushed_all_reduce.hpp): the gather, and the send for a
// projection that does not send its outputs itself (kernels/gemv.cu's does). Both are launched
// overlapped (kernels/common.cuh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>

#include "engine/pushed_all_reduce.hpp"

namespace troupe::cuda {

// Sends delta (n bf16, n a multiple of 8 within ar.slot_bytes, 16-byte aligned) to every peer's mailbox.
void pushed_send(const __nv_bfloat16* delta, size_t n, const PushedAllReduce& ar, cudaStream_t stream);

// residual += the ranks' sum, this rank's part in delta (as sent), the peers' in the mailboxes, which
// it empties; then the next call's mailboxes are in use. Same conditions on n and alignment.
void pushed_gather_add(const __nv_bfloat16* delta, __nv_bfloat16* residual, size_t n, const PushedAllReduce& ar,
                       cudaStream_t stream);

// The most rows pushed_gather_add_rms_norm takes (a decode step's few tokens).
constexpr size_t kGatherNormMaxRows = 8;

// pushed_gather_add, then normed = rms_norm(residual) · norm_weight (rows of width, at most
// kGatherNormMaxRows rows), bit for bit what kernels/rmsnorm.cuh's rms_norm then gives.
void pushed_gather_add_rms_norm(const __nv_bfloat16* delta, __nv_bfloat16* residual, size_t n,
                                const PushedAllReduce& ar, const __nv_bfloat16* norm_weight, size_t width, float eps,
                                __nv_bfloat16* normed, cudaStream_t stream);

}  // namespace troupe::cuda
