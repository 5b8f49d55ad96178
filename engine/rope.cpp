#include "engine/rope.hpp"

#include <cmath>
#include <numbers>

namespace troupe {

std::vector<float> rope_inverse_frequencies(const ModelConfig& config) {
  const int half = config.head_dim / 2;
  std::vector<float> inv(half);
  // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), all in f32.
  for (int i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(config.head_dim);
    inv[i] = 1.0f / std::pow(static_cast<float>(config.rope_theta), exponent);
  }
  const RopeScaling& s = config.rope_scaling;
  if (s.type == "llama3") {
    // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between blended.
    const double old_len = s.original_max_position_embeddings;
    const double low_freq_wavelen = old_len / s.low_freq_factor;
    const double high_freq_wavelen = old_len / s.high_freq_factor;
    for (float& f : inv) {
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen < high_freq_wavelen) continue;
      if (wavelen > low_freq_wavelen) {
        f = static_cast<float>(f / s.factor);
        continue;
      }
      const double smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      f = static_cast<float>((1.0 - smooth) * f / s.factor + smooth * f);
    }
  }
  return inv;
}

RopeValues rope_values(const ModelConfig& config, int max_positions) {
  const std::vector<float> inv = rope_inverse_frequencies(config);
  const size_t half = inv.size();
  RopeValues out;
  out.cos.resize(static_cast<size_t>(max_positions) * half);
  out.sin.resize(out.cos.size());
  for (int p = 0; p < max_positions; ++p) {
    for (size_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(p) * inv[i];  // an f32 product, as transformers computes it
      out.cos[p * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      out.sin[p * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
  return out;
}

}  // namespace troupe
