// 16-byte packs of the all-reduce kernels (kernels/peer_all_reduce.cu, kernels/pushed_all_reduce.cu,
// and the GEMV's sending end in kernels/gemv.cu): their sums in rank order, and the mailbox protocol
// in which the data is its own signal.
//
// Sums: v[0] + v[1] + … in f32, in that order, rounded once to the element type, so that every rank
// holds the same bits whichever kernel summed them.
//
// Mailboxes hold bf16 -0.0 in every element while empty; a sender writes a -0.0 of its message as
// +0.0 (which changes no sum, only the sign of an all-zero one), so a reader knows an element has
// arrived when it is not -0.0, and empties what it has read by writing -0.0 back.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/common.cuh"

namespace troupe::cuda::packs {

template <typename T>
struct Elem;
template <>
struct Elem<float> {
  using Bits = uint32_t;
  static constexpr int per_pack = 4;
};
template <>
struct Elem<bf16> {
  using Bits = uint16_t;
  static constexpr int per_pack = 8;
};

template <typename T>
__device__ __forceinline__ void to_floats(const uint4& v, float (&out)[Elem<T>::per_pack]) {
  if constexpr (std::is_same_v<T, float>) {
    out[0] = __uint_as_float(v.x);
    out[1] = __uint_as_float(v.y);
    out[2] = __uint_as_float(v.z);
    out[3] = __uint_as_float(v.w);
  } else {
    Bf16x8{v}.to_floats(out);
  }
}

template <typename T>
__device__ __forceinline__ uint4 from_floats(const float (&in)[Elem<T>::per_pack]) {
  if constexpr (std::is_same_v<T, float>) {
    return make_uint4(__float_as_uint(in[0]), __float_as_uint(in[1]), __float_as_uint(in[2]), __float_as_uint(in[3]));
  } else {
    return Bf16x8::of_floats(in).raw;
  }
}

// v[0] + v[1] + … + v[count-1], pack by pack, in that order, in f32, rounded once to T. The count may
// be known at run time only (the pushed all-reduce's rank count): the additions are the same.
template <typename T, int N>
__device__ __forceinline__ uint4 sum_in_order(const uint4 (&v)[N], int count = N) {
  constexpr int per_pack = Elem<T>::per_pack;
  float acc[per_pack];
  to_floats<T>(v[0], acc);
#pragma unroll
  for (int q = 1; q < N; ++q) {
    if (q >= count) break;
    float x[per_pack];
    to_floats<T>(v[q], x);
#pragma unroll
    for (int j = 0; j < per_pack; ++j) acc[j] += x[j];
  }
  return from_floats<T>(acc);
}

constexpr uint32_t kEmpty = 0x80008000u;  // two bf16 -0.0
constexpr uint16_t kEmptyElement = 0x8000u;

// A bf16 -0.0 as +0.0, so that it cannot read as empty.
__device__ __forceinline__ uint16_t scrub_element(uint16_t e) { return e == kEmptyElement ? uint16_t{0} : e; }

__device__ __forceinline__ uint32_t scrub_word(uint32_t w) {
  if ((w & 0xffffu) == 0x8000u) w &= 0xffff0000u;
  if ((w >> 16) == 0x8000u) w &= 0x0000ffffu;
  return w;
}

__device__ __forceinline__ uint4 scrub(uint4 v) { return make_uint4(scrub_word(v.x), scrub_word(v.y), scrub_word(v.z), scrub_word(v.w)); }

__device__ __forceinline__ bool holds_empty(uint32_t w) { return (w & 0xffffu) == 0x8000u || (w >> 16) == 0x8000u; }

__device__ __forceinline__ bool arrived(const uint4& v) {
  return !holds_empty(v.x) && !holds_empty(v.y) && !holds_empty(v.z) && !holds_empty(v.w);
}

__device__ __forceinline__ void store_volatile(uint4* p, const uint4& v) {
  asm volatile("st.volatile.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}

__device__ __forceinline__ void store_volatile(uint2* p, const uint2& v) {
  asm volatile("st.volatile.global.v2.u32 [%0], {%1, %2};" ::"l"(p), "r"(v.x), "r"(v.y) : "memory");
}

__device__ __forceinline__ void store_volatile(uint16_t* p, uint16_t v) {
  asm volatile("st.volatile.global.u16 [%0], %1;" ::"l"(p), "h"(v) : "memory");
}

__device__ __forceinline__ uint4 load_volatile(const uint4* p) {
  uint4 v;
  asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p)
               : "memory");
  return v;
}

__device__ __forceinline__ void empty(uint4* p) { store_volatile(p, make_uint4(kEmpty, kEmpty, kEmpty, kEmpty)); }

// Spins until every element of the pack at p has arrived, then empties it.
__device__ __forceinline__ uint4 receive(uint4* p) {
  uint4 v;
  do {
    v = load_volatile(p);
  } while (!arrived(v));
  empty(p);
  return v;
}

// receive(p) where `seen` is a first look at the pack already taken (issued with others).
__device__ __forceinline__ uint4 receive(uint4* p, const uint4& seen) {
  if (!arrived(seen)) return receive(p);
  empty(p);
  return seen;
}

}  // namespace troupe::cuda::packs
