#include "tools/weight_init.hpp"

#include <algorithm>
#include <thread>
#include <vector>

#include "engine/dtype.hpp"

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

float normal_from_bits(uint64_t bits) {
  // Four uniforms (u + 0.5) / 65536 sum to (s + 2) / 65536 with mean 2 and variance 4/12.
  int64_t s = static_cast<int64_t>(bits & 0xffff) + static_cast<int64_t>((bits >> 16) & 0xffff) +
              static_cast<int64_t>((bits >> 32) & 0xffff) + static_cast<int64_t>(bits >> 48);
  constexpr float scale = 1.7320508075688772f / 65536.0f;  // sqrt(3) / 2^16
  return static_cast<float>(s + 2 - 131072) * scale;
}

void fill_bf16(uint64_t stream, WeightInit init, uint64_t first, size_t count, uint16_t* out) {
  for (size_t i = 0; i < count; ++i) {
    float n = normal_from_bits(splitmix64(stream + first + i));
    // Two roundings (product, then sum) rather than a fused multiply-add: the file must not depend on
    // whether the compiler contracts this (the file is built with -ffp-contract=off).
    float v = init.mean + init.std * n;
    out[i] = f32_to_bf16(v);
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
