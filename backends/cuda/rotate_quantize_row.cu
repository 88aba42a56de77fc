// The fused append path for the common shape: a row (one token's H·d channels) of 2^m channels,
// m in {10, 11, 12}, groups of 128 on the token axis, 2 or 4 bits. One warp per row, the row in
// registers (2^(m-5) floats per lane), nothing re-read from device memory:
//  - load: lane l, register e hold element row_index(l, e): bits 0-2 of the index are e's low
//    bits (one 16-byte vector), bits 3-4 are the lane's low bits (two lanes fill a 32-byte
//    sector), the top three bits are the lane's high bits, the rest e's high bits. 16-bit rows
//    arrive through a per-warp shared staging area with cp.async, the next row's copy in flight
//    while this one is computed.
//  - FWHT (docs/spec.md §1, stages in ascending h): a stage on an index bit held in registers
//    is one add or subtract per element; a stage on a lane bit is one shuffle and one add/subtract
//    (written as fma(v, ±1, other): the product is exact, so this is the correctly rounded
//    other ± v, bit for bit the reference's a + b or a - b). The transform must not reach the
//    top three bits for fwht_n ≤ 2^(m-3), the only ones the benchmarks use; larger n take two
//    or three more shuffle stages, still exact. Then the one multiply by fwht_scale.
//  - reorder: the rotated row goes to a per-warp shared buffer (16-byte stores, conflict-free by
//    a swizzle of index bit 2); the quantizer gathers stored position p from rotated[perm[p]]
//    through a per-block table of byte offsets laid out in the order lanes read it.
//  - quantize (docs/spec.md §3): lane l owns positions 16(l mod 8) .. +15 of group 4r + l/8 for
//    r = 0, 1, ...: min/max over its 16 values then three xor-shuffles among the 8 lanes of the
//    group; the 16 codes form one 32-bit (b = 2) or 64-bit (b = 4) word, stored as one access.
// The float zero point uses the shortcut of quantize_group.cuh (t * (1/s), the exact quotient
// only within 2^-10 of a half-integer), with the clamp taken before the rounding (the same code:
// clamp(rne(u), 0, maxq) == rne(clamp(u, 0, maxq)) for integer maxq) and the rounding as
// (u + 1.5·2^23) - 1.5·2^23, whose low mantissa bits are the code.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "backends/cuda/cuda_error.h"
#include "backends/cuda/kernels.h"
#include "backends/cuda/quantize_group.cuh"
#include "backends/cuda/rotate_quantize_row.h"

namespace kvq::cuda {

namespace {

constexpr int kWarps = 8;
constexpr unsigned kFull = 0xFFFFFFFFu;

template <int kM>
__device__ __forceinline__ int row_index(int lane, int e) {
  return (e & 7) | ((lane & 3) << 3) | ((e >> 3) << 5) | ((lane >> 2) << (kM - 3));
}
// Shared-buffer word of element p: its low five bits (the bank) XOR-ed with index bits 5, 6,
// 7 ^ (m-3), 8. Then the 16-byte stores of 8 consecutive lanes (index bits 3, 4, m-3 vary) land
// on 8 distinct bank quads, and so do the quantizer's reads of an unpermuted row (32 lanes at
// positions differing in bits 4-8 hit 32 distinct banks). Bits 0-1 move only inside a 16-byte
// vector (by bits 5-6, which the store knows at compile time).
template <int kM>
__device__ __forceinline__ int phys(int p) {
  const int b7 = (p >> 7) ^ (kM == 10 ? 0 : p >> (kM - 3));
  return p ^ (((p >> 5) & 1) | (((p >> 6) & 1) << 1) | ((b7 & 1) << 2) | (((p >> 8) & 1) << 3));
}

template <int kR>
__device__ __forceinline__ void register_stage(float (&v)[kR], int h) {
#pragma unroll
  for (int e = 0; e < kR; ++e)
    if ((e & h) == 0) {
      const float a = v[e];
      const float b = v[e + h];
      v[e] = __fadd_rn(a, b);
      v[e + h] = __fsub_rn(a, b);
    }
}

template <int kR>
__device__ __forceinline__ void lane_stage(float (&v)[kR], int lane, int mask) {
  const float sign = (lane & mask) ? -1.0f : 1.0f;  // the upper lane of a pair holds b
#pragma unroll
  for (int e = 0; e < kR; ++e) {
    const float other = __shfl_xor_sync(kFull, v[e], mask);
    v[e] = __fmaf_rn(v[e], sign, other);  // exact ±v: a + b (lower) or a - b (upper)
  }
}

// Stages h = 1, 2, 4, ... n/2 of every n = 2^log2n block of the row.
template <int kM, int kR>
__device__ __forceinline__ void fwht_row(float (&v)[kR], int lane, int log2n) {
#pragma unroll
  for (int b = 0; b < kM; ++b) {
    if (b >= log2n) break;
    if (b < 3)
      register_stage(v, 1 << b);
    else if (b < 5)
      lane_stage(v, lane, 1 << (b - 3));
    else if (b < kM - 3)
      register_stage(v, 1 << (b - 2));
    else
      lane_stage(v, lane, 1 << (b - kM + 5));
  }
}

template <InputType kIn>
__device__ __forceinline__ void widen8(uint4 raw, float* out) {
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if constexpr (kIn == InputType::F16) {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[k]));
      out[2 * k] = f.x;
      out[2 * k + 1] = f.y;
    } else {
      out[2 * k] = __uint_as_float(w[k] << 16);
      out[2 * k + 1] = __uint_as_float(w[k] & 0xFFFF0000u);
    }
  }
}

__device__ __forceinline__ void copy_async16(void* smem, const void* global) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(global));
}
__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;\n"); }
__device__ __forceinline__ void copy_async_wait() { asm volatile("cp.async.wait_group 0;\n"); }

// A 16-bit row into the staging area in the order lanes read it back (conflict-free).
template <int kM>
__device__ __forceinline__ void stage_row(const uint16_t* row, uint4* stage, int lane) {
  constexpr int kVec = (1 << (kM - 5)) / 8;
#pragma unroll
  for (int j = 0; j < kVec; ++j)
    copy_async16(stage + j * 32 + lane, row + row_index<kM>(lane, 8 * j));
  copy_async_commit();
}

struct RowArgs {
  const void* kv;
  int64_t rows;
  int log2n;  // 0: no rotation
  float fwht_scale;
  float clip;
  bool int_zero_point;
  uint8_t* codes;
  uint16_t* scale;
  uint16_t* zero;
  uint8_t* zero_int;
  int64_t* bad_group;
  int64_t groups_per_row, line_bytes;
};

// Runs of 16 stored positions quantized together (kB runs at once for independent work):
// lane l, run r of the row reads positions 128 (4r + l/8) + 16 (l mod 8) + 0..15 from the
// shared buffer through the offset table (entry ((2r + h) * 32 + l) * 8 + k: position 8h + k).
template <int kBits>
using CodeWord = std::conditional_t<kBits == 2, uint32_t, uint64_t>;

__device__ __forceinline__ float gathered(const char* bytes, const uint16_t* table, int r,
                                          int lane, int e) {
  return *reinterpret_cast<const float*>(bytes + table[((2 * r + (e >> 3)) * 32 + lane) * 8 + (e & 7)]);
}

template <int kBits, int kB>
__device__ __forceinline__ void quantize_runs(const char* bytes, const uint16_t* table, int r0,
                                              int lane, int64_t row, const RowArgs& a) {
  constexpr float kMaxq = static_cast<float>((1 << kBits) - 1);
  const uint4* t4 = reinterpret_cast<const uint4*>(table);
  float x[kB][16];
#pragma unroll
  for (int b = 0; b < kB; ++b) {
    const uint4 t0 = t4[(2 * (r0 + b)) * 32 + lane];
    const uint4 t1 = t4[(2 * (r0 + b) + 1) * 32 + lane];
    const uint32_t off[8] = {t0.x, t0.y, t0.z, t0.w, t1.x, t1.y, t1.z, t1.w};
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      x[b][2 * k] = *reinterpret_cast<const float*>(bytes + (off[k] & 0xFFFFu));
      x[b][2 * k + 1] = *reinterpret_cast<const float*>(bytes + (off[k] >> 16));
    }
  }
  float lo[kB], hi[kB];
#pragma unroll
  for (int b = 0; b < kB; ++b) {
    lo[b] = x[b][0], hi[b] = x[b][0];
#pragma unroll
    for (int e = 1; e < 16; ++e) lo[b] = fminf(lo[b], x[b][e]), hi[b] = fmaxf(hi[b], x[b][e]);
  }
#pragma unroll
  for (int off = 1; off < 8; off <<= 1)
#pragma unroll
    for (int b = 0; b < kB; ++b) {
      lo[b] = fminf(lo[b], __shfl_xor_sync(kFull, lo[b], off));
      hi[b] = fmaxf(hi[b], __shfl_xor_sync(kFull, hi[b], off));
    }
  bool zero_extreme = false;
#pragma unroll
  for (int b = 0; b < kB; ++b) zero_extreme |= lo[b] == 0.0f || hi[b] == 0.0f;
  if (__any_sync(kFull, zero_extreme)) {
    // The reference's scan keeps the sign of the first zero in group order.
#pragma unroll
    for (int b = 0; b < kB; ++b) {
      int first = 0x7FFFFFFF;
      float sign = 0.0f;
#pragma unroll
      for (int e = 15; e >= 0; --e)
        if (x[b][e] == 0.0f) first = 16 * (lane & 7) + e, sign = x[b][e];
#pragma unroll
      for (int off = 1; off < 8; off <<= 1) {
        const int of = __shfl_xor_sync(kFull, first, off);
        const float os = __shfl_xor_sync(kFull, sign, off);
        if (of < first) first = of, sign = os;
      }
      if (lo[b] == 0.0f) lo[b] = sign;
      if (hi[b] == 0.0f) hi[b] = sign;
    }
  }
  const bool leader = (lane & 7) == 0;
#pragma unroll
  for (int b = 0; b < kB; ++b) {
    const int r = r0 + b;
    const int g = 4 * r + (lane >> 3);
    const int64_t group = row * a.groups_per_row + g;
    const float l = __fmul_rn(lo[b], a.clip);
    const float h = __fmul_rn(hi[b], a.clip);
    const float range = __fdiv_rn(__fsub_rn(h, l), kMaxq);
    const uint16_t scale16 = detail::half_bits(range);
    const uint16_t zero16 = detail::half_bits(l);
    if (!detail::half_finite(scale16) || (!a.int_zero_point && !detail::half_finite(zero16))) {
      if (leader)
        atomicMin(reinterpret_cast<unsigned long long*>(a.bad_group),
                  static_cast<unsigned long long>(group));
      continue;
    }
    CodeWord<kBits> w = 0;
    if (!a.int_zero_point) {
      if (leader) a.scale[group] = scale16, a.zero[group] = zero16;
      const float s = detail::half_value(scale16);
      const float z = detail::half_value(zero16);
      if (s != 0.0f) {
        // u = (x - z) / s as t * (1/s): |qa - u| <= |u| 2^-23 <= 2^-19 for u <= 16, so only a
        // value within 2^-14 of a half-integer can round differently; those take the exact
        // quotient one at a time. (Clamping first is the same code, see the file comment.)
        constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
        const float inv_s = __frcp_rn(s);
        uint32_t near_half = 0;
#pragma unroll
        for (int e = 0; e < 16; ++e) {
          const float qa =
              fminf(fmaxf(__fmul_rn(__fsub_rn(x[b][e], z), inv_s), 0.0f), kMaxq);
          const float y = __fadd_rn(qa, kMagic);
          if (fabsf(__fsub_rn(qa, __fsub_rn(y, kMagic))) >= 0.5f - 0x1p-14f) near_half |= 1u << e;
          w |= static_cast<CodeWord<kBits>>(__float_as_uint(y) - __float_as_uint(kMagic))
               << (e * kBits);
        }
        while (near_half != 0) {
          const int e = __ffs(near_half) - 1;
          near_half &= near_half - 1;
          const uint32_t code =
              detail::clamp_code(rintf(__fdiv_rn(__fsub_rn(gathered(bytes, table, r, lane, e), z), s)),
                                 kMaxq);
          w = (w & ~(static_cast<CodeWord<kBits>>(kMaxq) << (e * kBits))) |
              (static_cast<CodeWord<kBits>>(code) << (e * kBits));
        }
      }
    } else {
      const float s = range;
      uint32_t zp = 0;
      if (s != 0.0f) zp = detail::clamp_code(rintf(__fdiv_rn(-l, s)), kMaxq);
      if (leader) a.scale[group] = scale16, a.zero_int[group] = static_cast<uint8_t>(zp);
      if (s != 0.0f) {
        const float zpf = static_cast<float>(zp);
#pragma unroll 1
        for (int e = 0; e < 16; ++e)
          w |= static_cast<CodeWord<kBits>>(detail::clamp_code(
                   __fadd_rn(rintf(__fdiv_rn(gathered(bytes, table, r, lane, e), s)), zpf), kMaxq))
               << (e * kBits);
      }
    }
    *reinterpret_cast<CodeWord<kBits>*>(a.codes + row * a.line_bytes + g * 16 * kBits +
                                        (lane & 7) * 2 * kBits) = w;
  }
}

template <InputType kIn, int kM, int kBits>
__global__ void __launch_bounds__(kWarps * 32)
    row_kernel(RowArgs a, const int32_t* __restrict__ perm) {
  constexpr int kCols = 1 << kM;
  constexpr int kR = kCols / 32;       // floats per lane
  constexpr int kRuns = kCols / 512;   // 16-value runs per lane
  constexpr int kBatch = 2;            // runs quantized together
  constexpr bool kStaged = kIn != InputType::F32;
  extern __shared__ uint4 smem[];
  // [table: kCols uint16][per warp: buffer kCols floats][per warp: staging kCols 16-bit]
  uint16_t* table = reinterpret_cast<uint16_t*>(smem);
  const int warp = static_cast<int>(threadIdx.x >> 5);
  const int lane = static_cast<int>(threadIdx.x & 31u);
  float* buf = reinterpret_cast<float*>(table + kCols) + warp * kCols;
  uint4* stage = reinterpret_cast<uint4*>(reinterpret_cast<float*>(table + kCols) +
                                          kWarps * kCols) + warp * (kCols / 8);
  // Table entry ((r * 2 + h) * 32 + l) * 8 + k: byte offset in buf of stored position
  // 128 (4r + l/8) + 16 (l mod 8) + 8h + k, i.e. of rotated channel perm[that].
  for (int i = static_cast<int>(threadIdx.x); i < kCols; i += kWarps * 32) {
    const int k = i & 7, l = (i >> 3) & 31, h = (i >> 8) & 1, r = i >> 9;
    const int p = 128 * (4 * r + (l >> 3)) + 16 * (l & 7) + 8 * h + k;
    table[i] = static_cast<uint16_t>(4 * phys<kM>(perm ? perm[p] : p));
  }
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarps;
  int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  const uint16_t* src16 = static_cast<const uint16_t*>(a.kv);
  if constexpr (kStaged)
    if (row < a.rows) stage_row<kM>(src16 + row * kCols, stage, lane);
  for (; row < a.rows; row += stride) {
    float v[kR];
    if constexpr (kStaged) {
      uint4 raw[kR / 8];
      copy_async_wait();
      __syncwarp();
#pragma unroll
      for (int j = 0; j < kR / 8; ++j) raw[j] = stage[j * 32 + lane];
      __syncwarp();
      if (row + stride < a.rows) stage_row<kM>(src16 + (row + stride) * kCols, stage, lane);
#pragma unroll
      for (int j = 0; j < kR / 8; ++j) widen8<kIn>(raw[j], v + 8 * j);
    } else {
      const float* src = static_cast<const float*>(a.kv) + row * kCols;
#pragma unroll
      for (int j = 0; j < kR / 4; ++j) {
        const float4 f = __ldcs(reinterpret_cast<const float4*>(src + row_index<kM>(lane, 4 * j)));
        v[4 * j] = f.x, v[4 * j + 1] = f.y, v[4 * j + 2] = f.z, v[4 * j + 3] = f.w;
      }
    }
    if (a.log2n > 0) {
      fwht_row<kM>(v, lane, a.log2n);
#pragma unroll
      for (int e = 0; e < kR; ++e) v[e] = __fmul_rn(v[e], a.fwht_scale);
    }
#pragma unroll
    for (int j = 0; j < kR / 4; ++j) {
      // Element 4j + q lands in word q ^ x of the vector, x = index bits 5-6 = bits 1-2 of j.
      const int x = (j >> 1) & 3;
      *reinterpret_cast<float4*>(buf + (phys<kM>(row_index<kM>(lane, 4 * j)) & ~3)) =
          make_float4(v[4 * j + (0 ^ x)], v[4 * j + (1 ^ x)], v[4 * j + (2 ^ x)],
                      v[4 * j + (3 ^ x)]);
    }
    __syncwarp();
    const char* bytes = reinterpret_cast<const char*>(buf);
#pragma unroll 1
    for (int r = 0; r < kRuns; r += kBatch)
      quantize_runs<kBits, kBatch>(bytes, table, r, lane, row, a);
    __syncwarp();
  }
}

template <InputType kIn, int kM, int kBits>
void launch_row(const RowArgs& a, const int32_t* perm, cudaStream_t stream) {
  constexpr int kCols = 1 << kM;
  const size_t smem = kCols * sizeof(uint16_t) + kWarps * kCols * sizeof(float) +
                      (kIn != InputType::F32 ? kWarps * kCols * sizeof(uint16_t) : 0);
  static bool raised = false;
  if (!raised) {
    check(cudaFuncSetAttribute(row_kernel<kIn, kM, kBits>,
                               cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
          "rotate_quantize rows: shared memory limit");
    raised = true;
  }
  int device = 0, sms = 0, per_sm = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "SM count");
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, row_kernel<kIn, kM, kBits>,
                                                      kWarps * 32, smem),
        "rotate_quantize rows: occupancy");
  int64_t blocks = static_cast<int64_t>(sms) * (per_sm > 0 ? per_sm : 1);
  const int64_t needed = (a.rows + kWarps - 1) / kWarps;
  if (blocks > needed) blocks = needed;
  row_kernel<kIn, kM, kBits><<<static_cast<unsigned>(blocks), kWarps * 32, smem, stream>>>(a, perm);
  check_launch("rotate_quantize rows kernel");
}

template <InputType kIn, int kM>
void dispatch_bits(const RowArgs& a, int bits, const int32_t* perm, cudaStream_t stream) {
  if (bits == 2)
    launch_row<kIn, kM, 2>(a, perm, stream);
  else
    launch_row<kIn, kM, 4>(a, perm, stream);
}

template <InputType kIn>
void dispatch_cols(const RowArgs& a, int m, int bits, const int32_t* perm, cudaStream_t stream) {
  if (m == 10)
    dispatch_bits<kIn, 10>(a, bits, perm, stream);
  else if (m == 11)
    dispatch_bits<kIn, 11>(a, bits, perm, stream);
  else
    dispatch_bits<kIn, 12>(a, bits, perm, stream);
}

int log2_exact(int64_t n) {
  int m = 0;
  while ((int64_t{1} << m) < n) ++m;
  return (int64_t{1} << m) == n ? m : -1;
}

}  // namespace

bool rotate_quantize_rows(const void* kv, const FusedAppend& f, const DeviceQuantLayout& l,
                          uint8_t* codes, uint16_t* scale, uint16_t* zero, uint8_t* zero_int,
                          int64_t* bad_group, cudaStream_t stream) {
  const int m = log2_exact(l.cols);
  const int log2n = f.rotation != 0 ? log2_exact(f.fwht_n) : 0;
  if (m < 10 || m > 12 || l.channel_axis || l.group != 128 || (l.bits != 2 && l.bits != 4) ||
      log2n < 0 || log2n > m || (reinterpret_cast<uintptr_t>(kv) & 15u) != 0 || l.rows < 1)
    return false;
  RowArgs a{kv,   l.rows, log2n, f.fwht_scale, l.clip,      l.int_zero_point,
            codes, scale, zero, zero_int, bad_group, l.cols / 128, l.cols * l.bits / 8};
  switch (f.input) {
    case InputType::F32: dispatch_cols<InputType::F32>(a, m, l.bits, f.perm, stream); break;
    case InputType::F16: dispatch_cols<InputType::F16>(a, m, l.bits, f.perm, stream); break;
    case InputType::BF16: dispatch_cols<InputType::BF16>(a, m, l.bits, f.perm, stream); break;
  }
  return true;
}

}  // namespace kvq::cuda
