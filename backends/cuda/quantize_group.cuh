// One quantization group of docs/spec.md §3 quantized and packed by one warp; shared by quantize.cu
// (token axis, values in global memory) and rotate_quantize.cu (values in shared memory, read
// through the reorder permutation). `at(k)` returns element k of the group.
//
// Bit-exactness: min and max are exact in any order except for the sign of a zero extreme,
// which the reference's std::min/std::max scan takes from the first zero in group order; the
// warp reduces values, then settles that sign when an extreme is zero. Every other step uses the correctly rounded intrinsics
// (__fmul_rn, __fsub_rn, __fdiv_rn, rintf = round half to even) and __float2half_rn, which is
// the round-to-nearest-even conversion of reference/half.h (overflow -> inf). The division
// u = t / s is the one expensive step; codes only need rne(u), so the float zero-point path
// first forms t * (1/s) (error < 2^-22 relative) and falls back to the exact quotient when that
// lands within 2^-10 of a half-integer, the only place where the two can round differently.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace kvq::cuda::detail {

__device__ __forceinline__ uint16_t half_bits(float f) {
  return __half_as_ushort(__float2half_rn(f));
}
__device__ __forceinline__ float half_value(uint16_t h) {
  return __half2float(__ushort_as_half(h));
}
__device__ __forceinline__ bool half_finite(uint16_t h) { return (h & 0x7C00u) != 0x7C00u; }

// std::max(v, 0.0f) then std::min(v, maxq), then the integer (the reference's clamp_code).
__device__ __forceinline__ uint32_t clamp_code(float v, float maxq) {
  v = v < 0.0f ? 0.0f : v;
  v = maxq < v ? maxq : v;
  return static_cast<uint32_t>(v);
}

// Float zero point: clamp(rne((x - z) / s)), s != 0 (see the header comment for the shortcut:
// |qa - rne(qa)| is exact, and only a value within 2^-10 of 0.5 can round differently).
__device__ __forceinline__ uint32_t float_code(float x, float z, float s, float inv_s,
                                               float maxq) {
  const float t = __fsub_rn(x, z);
  const float qa = __fmul_rn(t, inv_s);
  const float r = rintf(qa);
  if (fabsf(__fsub_rn(qa, r)) < 0.5f - 0x1p-10f) return clamp_code(r, maxq);
  return clamp_code(rintf(__fdiv_rn(t, s)), maxq);
}

struct GroupParams {
  int bits;
  float clip;
  bool int_zero_point;
};

// A full group of 128 with b in {1, 2, 4, 8}: lane l owns elements 4l .. 4l+3 in registers, so
// min/max, codes and packing are straight-line code (4 b bits per lane, written as one store
// for b >= 2; b = 1 pairs two lanes' nibbles). Same arithmetic as the general path.
template <int kBits, class At>
__device__ bool quantize_full_group(At at, const GroupParams& p, uint8_t* out,
                                    uint16_t* scale_out, uint16_t* zero_out, uint8_t* zi_out) {
  const int lane = static_cast<int>(threadIdx.x & 31u);
  float v[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) v[j] = at(4 * lane + j);
  float lo = fminf(fminf(v[0], v[1]), fminf(v[2], v[3]));
  float hi = fmaxf(fmaxf(v[0], v[1]), fmaxf(v[2], v[3]));
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    lo = fminf(lo, __shfl_xor_sync(0xFFFFFFFFu, lo, off));
    hi = fmaxf(hi, __shfl_xor_sync(0xFFFFFFFFu, hi, off));
  }
  if (lo == 0.0f || hi == 0.0f) {  // warp-uniform: the sign of the first zero in group order
    int first = 0x7FFFFFFF;
    float sign = 0.0f;
#pragma unroll
    for (int j = 3; j >= 0; --j)
      if (v[j] == 0.0f) first = 4 * lane + j, sign = v[j];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const int of = __shfl_xor_sync(0xFFFFFFFFu, first, off);
      const float os = __shfl_xor_sync(0xFFFFFFFFu, sign, off);
      if (of < first) first = of, sign = os;
    }
    if (lo == 0.0f) lo = sign;
    if (hi == 0.0f) hi = sign;
  }
  const float maxq = static_cast<float>((1 << kBits) - 1);
  lo = __fmul_rn(lo, p.clip);
  hi = __fmul_rn(hi, p.clip);
  const float range = __fdiv_rn(__fsub_rn(hi, lo), maxq);
  const uint16_t scale16 = half_bits(range);
  const uint16_t zero16 = half_bits(lo);
  if (!half_finite(scale16) || (!p.int_zero_point && !half_finite(zero16))) return false;
  uint32_t bits = 0;
  if (!p.int_zero_point) {
    if (lane == 0) *scale_out = scale16, *zero_out = zero16;
    const float s = half_value(scale16);
    const float z = half_value(zero16);
    if (s != 0.0f) {
      const float inv_s = __frcp_rn(s);
#pragma unroll
      for (int j = 0; j < 4; ++j) bits |= float_code(v[j], z, s, inv_s, maxq) << (kBits * j);
    }
  } else {
    if (lane == 0) *scale_out = scale16;
    const float s = range;
    uint32_t zp = 0;
    if (s != 0.0f) zp = clamp_code(rintf(__fdiv_rn(-lo, s)), maxq);
    if (lane == 0) *zi_out = static_cast<uint8_t>(zp);
    if (s != 0.0f) {
      const float zpf = static_cast<float>(zp);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        bits |= clamp_code(__fadd_rn(rintf(__fdiv_rn(v[j], s)), zpf), maxq) << (kBits * j);
    }
  }
  if constexpr (kBits == 1) {
    const uint32_t other = __shfl_down_sync(0xFFFFFFFFu, bits, 1);
    if ((lane & 1) == 0) out[lane / 2] = static_cast<uint8_t>(bits | (other << 4));
  } else if constexpr (kBits == 2) {
    out[lane] = static_cast<uint8_t>(bits);
  } else if constexpr (kBits == 4) {
    reinterpret_cast<uint16_t*>(out)[lane] = static_cast<uint16_t>(bits);
  } else {
    reinterpret_cast<uint32_t*>(out)[lane] = bits;
  }
  return true;
}

// Warp-cooperative: all 32 lanes call it for the same group. n >= 1 elements; out receives
// ceil(n * bits / 8) bytes. Returns false (on every lane) when the scale or zero overflows fp16.
// kBits is a template parameter so the byte <-> code index arithmetic has constant divisors.
template <int kBits, class At>
__device__ bool quantize_group_warp_bits(At at, int n, const GroupParams& p, uint8_t* out,
                                         uint16_t* scale_out, uint16_t* zero_out,
                                         uint8_t* zi_out) {
  if constexpr (8 % kBits == 0)
    if (n == 128) return quantize_full_group<kBits>(at, p, out, scale_out, zero_out, zi_out);
  const int lane = static_cast<int>(threadIdx.x & 31u);
  // Numeric min and max first (value-only shuffles); the sign of a zero extreme is settled
  // afterwards by the first zero in group order, which is what the reference's scan keeps.
  float lo = __int_as_float(0x7F800000), hi = -lo;
  for (int k = lane; k < n; k += 32) {
    const float v = at(k);
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    lo = fminf(lo, __shfl_xor_sync(0xFFFFFFFFu, lo, off));
    hi = fmaxf(hi, __shfl_xor_sync(0xFFFFFFFFu, hi, off));
  }
  if (lo == 0.0f || hi == 0.0f) {  // warp-uniform branch
    int first = 0x7FFFFFFF;
    float sign = 0.0f;
    for (int k = lane; k < n; k += 32) {
      const float v = at(k);
      if (v == 0.0f) {
        first = k;
        sign = v;
        break;
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const int of = __shfl_xor_sync(0xFFFFFFFFu, first, off);
      const float os = __shfl_xor_sync(0xFFFFFFFFu, sign, off);
      if (of < first) first = of, sign = os;
    }
    if (lo == 0.0f) lo = sign;
    if (hi == 0.0f) hi = sign;
  }
  constexpr int bits = kBits;
  const float maxq = static_cast<float>((1 << bits) - 1);
  lo = __fmul_rn(lo, p.clip);
  hi = __fmul_rn(hi, p.clip);
  const float range = __fdiv_rn(__fsub_rn(hi, lo), maxq);
  const uint16_t scale16 = half_bits(range);
  const uint16_t zero16 = half_bits(lo);
  if (!half_finite(scale16) || (!p.int_zero_point && !half_finite(zero16))) return false;
  if (lane == 0) {
    *scale_out = scale16;
    if (!p.int_zero_point) *zero_out = zero16;
  }
  const int nbytes = (n * bits + 7) / 8;
  if (!p.int_zero_point) {
    const float s = half_value(scale16);
    const float z = half_value(zero16);
    const float inv_s = s != 0.0f ? __frcp_rn(s) : 0.0f;
    for (int i = lane; i < nbytes; i += 32) {
      uint32_t byte = 0;
      if (s != 0.0f) {
        const int first = (8 * i) / bits;
        int last = (8 * i + 7) / bits;
        last = last < n - 1 ? last : n - 1;
        for (int c = first; c <= last; ++c) {
          const uint32_t code = float_code(at(c), z, s, inv_s, maxq);
          const int shift = c * bits - 8 * i;
          byte |= shift >= 0 ? code << shift : code >> -shift;
        }
      }
      out[i] = static_cast<uint8_t>(byte & 0xFFu);
    }
    return true;
  }
  // Integer zero point (RotateKV's code): the fp32 scale quantizes, zp = clamp(rne(-lo / s)).
  const float s = range;
  uint32_t zp = 0;
  if (s != 0.0f) zp = clamp_code(rintf(__fdiv_rn(-lo, s)), maxq);
  if (lane == 0) *zi_out = static_cast<uint8_t>(zp);
  const float zpf = static_cast<float>(zp);
  for (int i = lane; i < nbytes; i += 32) {
    uint32_t byte = 0;
    if (s != 0.0f) {
      const int first = (8 * i) / bits;
      int last = (8 * i + 7) / bits;
      last = last < n - 1 ? last : n - 1;
      for (int c = first; c <= last; ++c) {
        const uint32_t code = clamp_code(__fadd_rn(rintf(__fdiv_rn(at(c), s)), zpf), maxq);
        const int shift = c * bits - 8 * i;
        byte |= shift >= 0 ? code << shift : code >> -shift;
      }
    }
    out[i] = static_cast<uint8_t>(byte & 0xFFu);
  }
  return true;
}

template <class At>
__device__ bool quantize_group_warp(At at, int n, const GroupParams& p, uint8_t* out,
                                    uint16_t* scale_out, uint16_t* zero_out, uint8_t* zi_out) {
  switch (p.bits) {
    case 1: return quantize_group_warp_bits<1>(at, n, p, out, scale_out, zero_out, zi_out);
    case 2: return quantize_group_warp_bits<2>(at, n, p, out, scale_out, zero_out, zi_out);
    case 3: return quantize_group_warp_bits<3>(at, n, p, out, scale_out, zero_out, zi_out);
    case 4: return quantize_group_warp_bits<4>(at, n, p, out, scale_out, zero_out, zi_out);
    default: return quantize_group_warp_bits<8>(at, n, p, out, scale_out, zero_out, zi_out);
  }
}

// Byte offset of token-axis group i (reference GroupLayout::byte_offset).
__device__ __forceinline__ int64_t token_group_offset(int64_t i, int64_t groups_per_line,
                                                      int64_t group, int64_t cols, int bits) {
  const int64_t full = (group * bits + 7) / 8;
  const int64_t tail = cols - (groups_per_line - 1) * group;
  const int64_t line = (groups_per_line - 1) * full + (tail * bits + 7) / 8;
  return (i / groups_per_line) * line + (i % groups_per_line) * full;
}

}  // namespace kvq::cuda::detail
