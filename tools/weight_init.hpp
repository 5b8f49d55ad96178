// Deterministic random weights: every value is a pure function of (seed, tensor name, element index),
// so a checkpoint comes out bit-identical whatever the thread count, write order or libc, and a model
// cut to its first layers shares those layers' bytes with the full one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "tools/model_layout.hpp"

namespace troupe {

// The counter base of one tensor's values.
uint64_t weight_stream(uint64_t seed, std::string_view tensor_name);

// An approximately standard normal variate from 64 random bits: the sum of four 16-bit uniforms,
// centred and scaled to unit variance (Irwin-Hall). Only integer ops and one IEEE multiply, so no
// libm function whose last bits differ between C libraries.
float normal_from_bits(uint64_t bits);

// Values [first, first + count) of the tensor with stream `stream`, as bf16 (round to nearest even).
// Value i is, in float arithmetic with each operation rounded:
//   n = (sum of the four 16-bit fields of splitmix64(stream + i) - 131070) * (sqrt(3) / 65536)
//   value = bf16(mean + std * n)
void fill_bf16(uint64_t stream, WeightInit init, uint64_t first, size_t count, uint16_t* out);

// All `numel` values, split over `threads` threads when the tensor is large enough to be worth it.
void generate_bf16(uint64_t stream, WeightInit init, uint64_t numel, uint16_t* out, int threads);

}  // namespace troupe
