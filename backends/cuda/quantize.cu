// Quantize + pack and dequantize (docs/spec.md §3) on the GPU, bit-exact with
// reference/quantize.cpp.
// Token axis: one warp per group (quantize_group.cuh), the group's values read coalesced;
// 4 bytes read per element, b/8 + 4/G written. Channel axis: one thread per group (G tokens of
// one column): neighbouring threads read neighbouring columns, so the reads coalesce, and each
// thread scans its column in token order (min/max exactly as the reference's scan) and packs
// its own stream. Dequantize: one thread per element, x_hat = fma((float)q, s, z) (__fmaf_rn).
#include <cuda_runtime.h>

#include "backends/cuda/cuda_error.h"
#include "backends/cuda/kernels.h"
#include "backends/cuda/quantize_group.cuh"

namespace kvq::cuda {

namespace {

using detail::GroupParams;

__global__ void quantize_token_kernel(const float* __restrict__ x, DeviceQuantLayout l,
                                      uint8_t* codes, uint16_t* scale, uint16_t* zero,
                                      uint8_t* zero_int, int64_t* bad_group) {
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  const GroupParams p{l.bits, l.clip, l.int_zero_point};
  for (int64_t g = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
       g < l.group_count; g += warps) {
    const int64_t row = g / l.groups_per_line, gi = g % l.groups_per_line;
    const int64_t first = gi * l.group;
    const int n = static_cast<int>(l.cols - first < l.group ? l.cols - first : l.group);
    const float* gx = x + row * l.cols + first;
    const int64_t off = detail::token_group_offset(g, l.groups_per_line, l.group, l.cols, l.bits);
    const bool ok = detail::quantize_group_warp([gx](int k) { return gx[k]; }, n, p, codes + off,
                                                scale + g, zero + g, zero_int + g);
    if (!ok && (threadIdx.x & 31u) == 0)
      atomicMin(reinterpret_cast<unsigned long long*>(bad_group),
                static_cast<unsigned long long>(g));
  }
}

// Channel axis: group g covers row block rb = g / cols of column c = g % cols.
__global__ void quantize_channel_kernel(const float* __restrict__ x, DeviceQuantLayout l,
                                        uint8_t* codes, uint16_t* scale, uint16_t* zero,
                                        uint8_t* zero_int, int64_t* bad_group) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= l.group_count) return;
  const int64_t rb = g / l.cols, c = g % l.cols;
  const int64_t row0 = rb * l.group;
  const int64_t n = l.rows - row0 < l.group ? l.rows - row0 : l.group;
  const float* gx = x + row0 * l.cols + c;
  float lo = gx[0], hi = gx[0];
  for (int64_t k = 1; k < n; ++k) {  // the reference's scan: strict comparisons keep the first
    const float v = gx[k * l.cols];
    if (v < lo) lo = v;
    if (hi < v) hi = v;
  }
  const int bits = l.bits;
  const float maxq = static_cast<float>((1 << bits) - 1);
  lo = __fmul_rn(lo, l.clip);
  hi = __fmul_rn(hi, l.clip);
  const float range = __fdiv_rn(__fsub_rn(hi, lo), maxq);
  const uint16_t scale16 = detail::half_bits(range);
  const uint16_t zero16 = detail::half_bits(lo);
  if (!detail::half_finite(scale16) || (!l.int_zero_point && !detail::half_finite(zero16))) {
    atomicMin(reinterpret_cast<unsigned long long*>(bad_group), static_cast<unsigned long long>(g));
    return;
  }
  scale[g] = scale16;
  const int64_t full = (l.group * bits + 7) / 8;
  uint8_t* out = codes + rb * l.cols * full + c * ((n * bits + 7) / 8);
  const float s = l.int_zero_point ? range : detail::half_value(scale16);
  const float z = detail::half_value(zero16);
  float zpf = 0.0f;
  if (l.int_zero_point) {
    const uint32_t zp = s != 0.0f ? detail::clamp_code(rintf(__fdiv_rn(-lo, s)), maxq) : 0u;
    zero_int[g] = static_cast<uint8_t>(zp);
    zpf = static_cast<float>(zp);
  } else {
    zero[g] = zero16;
  }
  uint32_t acc = 0;
  int acc_bits = 0;
  int64_t byte = 0;
  for (int64_t k = 0; k < n; ++k) {
    uint32_t code = 0;
    if (s != 0.0f) {
      const float v = gx[k * l.cols];
      code = l.int_zero_point
                 ? detail::clamp_code(__fadd_rn(rintf(__fdiv_rn(v, s)), zpf), maxq)
                 : detail::clamp_code(rintf(__fdiv_rn(__fsub_rn(v, z), s)), maxq);
    }
    acc |= code << acc_bits;
    acc_bits += bits;
    while (acc_bits >= 8) {
      out[byte++] = static_cast<uint8_t>(acc & 0xFFu);
      acc >>= 8;
      acc_bits -= 8;
    }
  }
  if (acc_bits > 0) out[byte] = static_cast<uint8_t>(acc & 0xFFu);
}

__device__ __forceinline__ uint32_t get_code(const uint8_t* in, int64_t i, int bits) {
  const int64_t bit = i * bits;
  const int64_t byte = bit >> 3;
  const int shift = static_cast<int>(bit & 7);
  uint32_t v = static_cast<uint32_t>(in[byte]) >> shift;
  if (shift + bits > 8) v |= static_cast<uint32_t>(in[byte + 1]) << (8 - shift);
  return v & ((1u << bits) - 1u);
}

__global__ void dequantize_kernel(const uint8_t* __restrict__ codes,
                                  const uint16_t* __restrict__ scale,
                                  const uint16_t* __restrict__ zero,
                                  const uint8_t* __restrict__ zero_int, DeviceQuantLayout l,
                                  float* __restrict__ out) {
  const int64_t total = l.rows * l.cols;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = e / l.cols, col = e % l.cols;
    int64_t g, k, off;
    if (!l.channel_axis) {
      const int64_t gi = col / l.group;
      g = row * l.groups_per_line + gi;
      k = col - gi * l.group;
      off = detail::token_group_offset(g, l.groups_per_line, l.group, l.cols, l.bits);
    } else {
      const int64_t rb = row / l.group;
      g = rb * l.cols + col;
      k = row - rb * l.group;
      const int64_t n = l.rows - rb * l.group < l.group ? l.rows - rb * l.group : l.group;
      const int64_t full = (l.group * l.bits + 7) / 8;
      off = rb * l.cols * full + col * ((n * l.bits + 7) / 8);
    }
    const float code = static_cast<float>(get_code(codes + off, k, l.bits));
    const float s = detail::half_value(scale[g]);
    out[e] = l.int_zero_point ? __fmul_rn(s, __fsub_rn(code, static_cast<float>(zero_int[g])))
                              : __fmaf_rn(code, s, detail::half_value(zero[g]));
  }
}

int64_t grid_for(int64_t work, int threads) {
  int64_t blocks = (work + threads - 1) / threads;
  return blocks < 1 ? 1 : (blocks > 1048576 ? 1048576 : blocks);
}

}  // namespace

void quantize(const float* x, const DeviceQuantLayout& l, uint8_t* codes, uint16_t* scale,
              uint16_t* zero, uint8_t* zero_int, int64_t* bad_group, cudaStream_t stream) {
  if (l.group_count == 0) return;
  if (!l.channel_axis) {
    const int64_t blocks = grid_for(l.group_count * 32, 256);
    quantize_token_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
        x, l, codes, scale, zero, zero_int, bad_group);
  } else {
    const int64_t blocks = grid_for(l.group_count, 128);
    quantize_channel_kernel<<<static_cast<unsigned>(blocks), 128, 0, stream>>>(
        x, l, codes, scale, zero, zero_int, bad_group);
  }
  check_launch("quantize kernel");
}

void dequantize(const uint8_t* codes, const uint16_t* scale, const uint16_t* zero,
                const uint8_t* zero_int, const DeviceQuantLayout& l, float* out,
                cudaStream_t stream) {
  const int64_t total = l.rows * l.cols;
  if (total == 0) return;
  const int64_t blocks = grid_for(total, 256);
  dequantize_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(codes, scale, zero,
                                                                       zero_int, l, out);
  check_launch("dequantize kernel");
}

}  // namespace kvq::cuda
