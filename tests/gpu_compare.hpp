// Helpers for the GPU-against-CPU tests (tests/*_gpu_test.cpp): bf16-exact random inputs, the
// relative-error check, poisoned outputs and guards. Header-only so that each test program takes
// what it uses.
#pragma once

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engine/backend.hpp"
#include "engine/dtype.hpp"

namespace troupe::test {

inline constexpr uint16_t bf16_nan = 0xffff;

inline int64_t count_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

inline float round_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// Values that bf16 holds exactly, drawn from N(mean, stddev).
inline std::vector<float> random_values(int64_t n, uint32_t seed, float mean = 0.0f, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(mean, stddev);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = round_bf16(dist(rng));
  return v;
}

inline std::vector<float> read(Backend& backend, const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  backend.download(t, v.data());
  return v;
}

inline std::vector<int32_t> read_i32(Backend& backend, const Tensor& t) {
  std::vector<int32_t> v(static_cast<size_t>(t.numel()));
  backend.download(t, v.data());
  return v;
}

inline Tensor upload(Backend& backend, const std::vector<float>& v, const std::vector<int64_t>& shape, DType dtype) {
  Tensor t = backend.allocate(shape, dtype);
  backend.upload(HostView{v.data(), DType::f32, shape}, t);
  return t;
}

inline Tensor upload_i32(Backend& backend, const std::vector<int32_t>& v, const std::vector<int64_t>& shape) {
  Tensor t = backend.allocate(shape, DType::i32);
  backend.upload(HostView{v.data(), DType::i32, shape}, t);
  return t;
}

// A bf16 tensor whose every element is NaN, so that an element an op fails to write shows.
inline Tensor poisoned_bf16(Backend& backend, const std::vector<int64_t>& shape) {
  Tensor t = backend.allocate(shape, DType::bf16);
  std::vector<uint16_t> nan(static_cast<size_t>(count_of(shape)), bf16_nan);
  backend.upload(HostView{nan.data(), DType::bf16, shape}, t);
  return t;
}

// ‖out − ref‖ / ‖ref‖ ≤ tolerance over all elements, and no NaN or infinity in out.
inline void expect_close(const std::vector<float>& out, const std::vector<float>& ref, const std::string& what,
                         double tolerance = 1e-2) {
  ASSERT_EQ(out.size(), ref.size()) << what;
  double diff2 = 0.0, ref2 = 0.0;
  int64_t bad = 0, first_bad = -1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) {
      if (bad++ == 0) first_bad = static_cast<int64_t>(i);
      continue;
    }
    const double d = static_cast<double>(out[i]) - ref[i];
    diff2 += d * d;
    ref2 += static_cast<double>(ref[i]) * ref[i];
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << out.size() << " outputs not finite, first at " << first_bad;
  ASSERT_GT(ref2, 0.0) << what << ": reference is all zeros, the comparison would say nothing";
  const double rel = std::sqrt(diff2 / ref2);
  EXPECT_LE(rel, tolerance) << what << ": relative error " << rel;
}

// Every element of out the same as ref's by `same(out[i], ref[i])`, counting mismatches rather than
// printing whole vectors.
template <class Same>
void expect_all_same(const std::vector<float>& out, const std::vector<float>& ref, const std::string& what, Same same) {
  ASSERT_EQ(out.size(), ref.size()) << what;
  int64_t differ = 0, first = -1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (same(out[i], ref[i])) continue;
    if (differ++ == 0) first = static_cast<int64_t>(i);
  }
  EXPECT_EQ(differ, 0) << what << ": " << differ << " of " << out.size() << " elements differ, first at " << first
                       << (first >= 0 ? " (" + std::to_string(out[first]) + " vs " + std::to_string(ref[first]) + ")"
                                      : std::string());
}

// Bit-for-bit equal (as f32), but any NaN equals any NaN and 0 equals -0.
inline void expect_equal(const std::vector<float>& out, const std::vector<float>& ref, const std::string& what) {
  expect_all_same(out, ref, what, [](float a, float b) { return a == b || (std::isnan(a) && std::isnan(b)); });
}

// The same bits, NaN payloads and the signs of zeros included (values read back from bf16 keep them).
inline void expect_same_bits(const std::vector<float>& out, const std::vector<float>& ref, const std::string& what) {
  expect_all_same(out, ref, what,
                  [](float a, float b) { return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b); });
}

// Every element of a guard (rows after an op's output) must still be the poison.
inline void expect_untouched(const std::vector<float>& guard, const std::string& what) {
  int64_t touched = 0;
  for (float v : guard) touched += !std::isnan(v);
  EXPECT_EQ(touched, 0) << what << ": " << touched << " elements written past the end of the output";
}

}  // namespace troupe::test
