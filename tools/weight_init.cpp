#include "tools/weight_init.hpp"

#include <algorithm>
#include <bit>
#include <thread>
#include <vector>

namespace troupe {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Below this many values a second thread costs more to start than it saves.
constexpr uint64_t min_values_per_thread = uint64_t{1} << 20;

}  // namespace

uint64_t weight_stream(uint64_t seed, std::string_view tensor_name) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over the name, then mixed with the seed
  for (unsigned char ch : tensor_name) h = (h ^ ch) * 0x100000001b3ull;
  return splitmix64(h ^ splitmix64(seed));
}

namespace {

// Four uniforms (u + 0.5) / 65536 sum to (s + 2) / 65536 with mean 2 and variance 4/12, so
// (s + 2 - 131072) / 65536 * sqrt(3) has mean 0 and variance 1.
constexpr float unit_scale = 1.7320508075688772f / 65536.0f;  // sqrt(3) / 2^16

// The sum of the four 16-bit fields, two at a time in 32-bit lanes.
inline int32_t sum_of_fields(uint64_t bits) {
  uint64_t pairs = (bits & 0x0000ffff0000ffffull) + ((bits >> 16) & 0x0000ffff0000ffffull);
  return static_cast<int32_t>((pairs & 0xffffffffu) + (pairs >> 32));
}

}  // namespace

float normal_from_bits(uint64_t bits) { return static_cast<float>(sum_of_fields(bits) - 131070) * unit_scale; }

// Cloned for AVX2 (picked at run time) because this loop is what bounds writing a checkpoint when
// the disk is fast; the clones compute the same bits: integer ops and separately rounded IEEE
// multiply and add (this file is built with -ffp-contract=off, and "avx2" does not enable FMA).
#ifdef TROUPE_SANITIZED
#define TROUPE_WEIGHT_CLONES
#else
#define TROUPE_WEIGHT_CLONES __attribute__((target_clones("avx2", "default")))
#endif
TROUPE_WEIGHT_CLONES void fill_bf16(uint64_t stream, WeightInit init, uint64_t first,
                                                                  size_t count, uint16_t* out) {
  for (size_t i = 0; i < count; ++i) {
    float n = static_cast<float>(sum_of_fields(splitmix64(stream + first + i)) - 131070) * unit_scale;
    float v = init.mean + init.std * n;
    // f32_to_bf16 without its NaN case: v is always finite here.
    uint32_t u = std::bit_cast<uint32_t>(v);
    out[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}

void generate_bf16(uint64_t stream, WeightInit init, uint64_t numel, uint16_t* out, int threads) {
  uint64_t parts = std::clamp<uint64_t>(numel / min_values_per_thread, 1, static_cast<uint64_t>(std::max(threads, 1)));
  if (parts == 1) {
    fill_bf16(stream, init, 0, numel, out);
    return;
  }
  std::vector<std::jthread> workers;
  uint64_t per = (numel + parts - 1) / parts;
  for (uint64_t begin = per; begin < numel; begin += per) {
    uint64_t count = std::min(per, numel - begin);
    workers.emplace_back([=] { fill_bf16(stream, init, begin, count, out + begin); });
  }
  fill_bf16(stream, init, 0, std::min(per, numel), out);
}

}  // namespace troupe
