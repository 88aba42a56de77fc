// IEEE binary16 and bfloat16 conversions (docs/spec.md §0): widening is exact, narrowing rounds to
// nearest even, overflow gives inf, subnormals are kept. Pure bit manipulation so every backend
// (scalar, AVX, CUDA host code) agrees with it by construction.
#pragma once

#include <bit>
#include <cstdint>

namespace kvq {

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t man = h & 0x3FFu;
  if (exp == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (man << 13));
  if (exp != 0) return std::bit_cast<float>(sign | ((exp + 112) << 23) | (man << 13));
  // Subnormal half: man * 2^-24, exact in binary32.
  const float magnitude = static_cast<float>(man) * 0x1p-24f;
  return sign ? -magnitude : magnitude;
}

inline uint16_t float_to_half(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t abs = x & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u | ((abs >> 13) & 0x3FFu));
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to >= 65520
  if (abs >= 0x38800000u) {  // normal half range: drop 13 mantissa bits, ties to even
    const uint32_t rebased = abs - (112u << 23);
    const uint32_t lsb = (rebased >> 13) & 1u;
    return static_cast<uint16_t>(sign | ((rebased + 0xFFFu + lsb) >> 13));
  }
  if (abs < 0x33000000u) return sign;  // below half the smallest subnormal (2^-25): +-0
  // Subnormal half: value / 2^-24 rounded to an integer, ties to even.
  const uint32_t exp = abs >> 23;
  const uint32_t man = (abs & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126u - exp;  // man * 2^(exp-150) / 2^-24 = man >> (126 - exp)
  const uint32_t q = man >> shift;
  const uint32_t rem = man & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  const uint32_t rounded = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
  return static_cast<uint16_t>(sign | rounded);
}

// Rounds f to the nearest binary16 value and returns it widened back to binary32.
inline float round_to_half(float f) { return half_to_float(float_to_half(f)); }

inline float bf16_to_float(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

inline uint16_t float_to_bf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  const uint32_t lsb = (x >> 16) & 1u;
  return static_cast<uint16_t>((x + 0x7FFFu + lsb) >> 16);
}

}  // namespace kvq
