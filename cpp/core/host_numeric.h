// Host-side conversions between float and the 16-bit storage types, rounding to nearest even like
// XLA's convert. Used by the CPU loops; CUDA code uses the cuda_bf16/cuda_fp16 intrinsics instead.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/problem.h"

namespace qkrope {

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bf16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));
  return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

inline uint16_t float_to_f16(float f) {
  uint32_t u = float_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (u >= 0x477ff000u) return sign | 0x7c00u;  // rounds to infinity (>= 65520)
  if (u < 0x38800000u) {                        // half subnormal: round |f| * 2^24 to an integer
    const float scaled = std::fabs(f) * 16777216.0f;
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  u -= 112u << 23;  // rebias the exponent from 127 to 15
  u += 0xfffu + ((u >> 13) & 1u);
  return sign | static_cast<uint16_t>(u >> 13);
}

inline float load_float(const void* base, ElemType type, int64_t index) {
  switch (type) {
    case ElemType::kF32:
      return static_cast<const float*>(base)[index];
    case ElemType::kBF16:
      return bf16_to_float(static_cast<const uint16_t*>(base)[index]);
    case ElemType::kF16:
      return f16_to_float(static_cast<const uint16_t*>(base)[index]);
  }
  return 0.0f;
}

inline void store_float(void* base, ElemType type, int64_t index, float value) {
  switch (type) {
    case ElemType::kF32:
      static_cast<float*>(base)[index] = value;
      return;
    case ElemType::kBF16:
      static_cast<uint16_t*>(base)[index] = float_to_bf16(value);
      return;
    case ElemType::kF16:
      static_cast<uint16_t*>(base)[index] = float_to_f16(value);
      return;
  }
}

}  // namespace qkrope
