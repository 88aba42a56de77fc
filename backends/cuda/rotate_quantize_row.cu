// The fused append path for the common shape: a row (one token's H·d channels) of 2^m channels,
// m in {10, 11, 12}, groups of 128 on the token axis, 2 or 4 bits. A team of 2^m / 32 threads
// (one to four warps) per row, 32 values per thread (128 registers, 4 blocks = 16 warps per SM);
// blocks of 128 threads loop over rows (a persistent grid).
//  - load: thread t of the team reads channels 32t .. 32t+31 straight into registers (16-byte
//    loads, the next row's loads issued before this row is computed).
//  - FWHT (docs/spec.md §1, stages in ascending h) in up to three register passes, each over 5
//    index bits held in the thread's 32 registers, one add or subtract per element and stage:
//    pass 1 bits 0-4 (as loaded), pass 2 bits 5-9 (lane = bits 0-4), pass 3 bits 10 and 11
//    (only for fwht_n > 1024). Between passes the row goes through a shared buffer whose word
//    for index i is i + i/32 (one pad word per 32): every pass's access, and the quantizer's
//    gather without a permutation, is then conflict-free with [register + constant] addresses.
//    The last pass applies the one multiply by fwht_scale.
//  - reorder + quantize (docs/spec.md §3): thread t quantizes stored positions 32t .. 32t+31
//    (a quarter of group t/4), reading position p from rotated[perm[p]] through 32 shared
//    addresses computed once per block and kept in registers (one load per element); min/max
//    over its 32 values then two xor-shuffles among the group's four threads. Two buffers
//    alternate between rows, so one barrier per row separates a row's gather from the stores
//    of the row after next.
//  - codes (float zero point) by comparison with exact thresholds, no division: with s the
//    fp16 scale widened and T_k = (k + 1/2)·s (exact in fp32: 11 by at most 5 significant
//    bits), rne(fl(t / s)) > k exactly when t > T_k for even k and t >= T_k for odd k (fl(t/s)
//    rounds to k + 1/2 only from within half an ulp, which s moves by less than an ulp of T_k;
//    the tie goes to the even code). The code is found by binary search over the thresholds
//    (b = 2: two comparisons), clamping to [0, maxq] included. Checked exhaustively against
//    rne(fl(t/s)) for every positive fp16 s and t within 3 ulps of each threshold.
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

constexpr int kThreads = 128;
// Blocks per SM the registers must allow (128 registers a thread, no spills; 5 or 6 blocks spill
// the gather addresses and measured slower: 0.482 and 0.522 ms against 0.434 on the H100).
constexpr int kMinBlocks = 4;
constexpr unsigned kFull = 0xFFFFFFFFu;

// Shared word of row index i (one pad word per 32).
__host__ __device__ constexpr int padded(int i) { return i + (i >> 5); }

// One FWHT stage on register bit j (stride 2^j in the thread's 32 values).
__device__ __forceinline__ void register_stage(float (&v)[32], int j) {
  const int h = 1 << j;
#pragma unroll
  for (int e = 0; e < 32; ++e)
    if ((e & h) == 0) {
      const float a = v[e];
      const float b = v[e + h];
      v[e] = __fadd_rn(a, b);
      v[e + h] = __fsub_rn(a, b);
    }
}

// Register stages on register bits kStart .. kStart + kCount - 1, ascending.
template <int kStart, int kCount>
__device__ __forceinline__ void stages(float (&v)[32]) {
#pragma unroll
  for (int j = kStart; j < kStart + kCount; ++j) register_stage(v, j);
}

// The first `count` stages of a pass whose register bits kStart.. are index bits in ascending
// order. A switch of straight-line sequences rather than a test per stage: a conditional stage
// would cost a register copy per butterfly where its branch merges.
template <int kStart>
__device__ __forceinline__ void pass_stages(float (&v)[32], int count) {
  switch (count) {
    case 1: stages<kStart, 1>(v); break;
    case 2: if constexpr (kStart <= 3) stages<kStart, 2>(v); break;
    case 3: if constexpr (kStart <= 2) stages<kStart, 3>(v); break;
    case 4: if constexpr (kStart <= 1) stages<kStart, 4>(v); break;
    case 5: if constexpr (kStart == 0) stages<kStart, 5>(v); break;
    default: break;
  }
}

template <InputType kIn>
struct Raw {
  static constexpr int kVec = kIn == InputType::F32 ? 8 : 4;  // 16-byte vectors per thread
  uint4 q[kVec];
};

template <InputType kIn>
__device__ __forceinline__ void load_raw(Raw<kIn>& r, const void* kv, int64_t first) {
  const uint4* src = reinterpret_cast<const uint4*>(
      static_cast<const char*>(kv) + first * (kIn == InputType::F32 ? 4 : 2));
#pragma unroll
  for (int j = 0; j < Raw<kIn>::kVec; ++j) r.q[j] = __ldcs(src + j);
}

template <InputType kIn>
__device__ __forceinline__ void widen(const Raw<kIn>& r, float (&v)[32]) {
#pragma unroll
  for (int j = 0; j < Raw<kIn>::kVec; ++j) {
    const uint32_t w[4] = {r.q[j].x, r.q[j].y, r.q[j].z, r.q[j].w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if constexpr (kIn == InputType::F32) {
        v[4 * j + k] = __uint_as_float(w[k]);
      } else if constexpr (kIn == InputType::F16) {
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[k]));
        v[8 * j + 2 * k] = f.x;
        v[8 * j + 2 * k + 1] = f.y;
      } else {
        v[8 * j + 2 * k] = __uint_as_float(w[k] << 16);
        v[8 * j + 2 * k + 1] = __uint_as_float(w[k] & 0xFFFF0000u);
      }
    }
  }
}

__device__ __forceinline__ void scale_all(float (&v)[32], float s) {
#pragma unroll
  for (int e = 0; e < 32; ++e) v[e] = __fmul_rn(v[e], s);
}

template <int kOffset>
__device__ __forceinline__ float gather(uint32_t addr) {
  float f;
  asm volatile("ld.shared.f32 %0, [%1+%2];\n" : "=f"(f) : "r"(addr), "n"(kOffset));
  return f;
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
};

// w |= code(t) << kShift for b = 2 (file comment): t >= T_1 sets the high bit and picks T_2 or
// T_0, t > that sets the low bit. Predicated ORs, so each bit costs a compare and an OR.
template <int kShift>
__device__ __forceinline__ void or_code2(uint32_t& w, float t, float t0, float t1, float t2) {
  asm("{\n\t.reg .pred hi, lo;\n\t.reg .f32 th;\n\t"
      "setp.ge.f32 hi, %1, %2;\n\t"
      "selp.f32 th, %3, %4, hi;\n\t"
      "setp.gt.f32 lo, %1, th;\n\t"
      "@hi or.b32 %0, %0, %5;\n\t"
      "@lo or.b32 %0, %0, %6;\n\t}"
      : "+r"(w)
      : "f"(t), "f"(t1), "f"(t2), "f"(t0), "n"(2u << kShift), "n"(1u << kShift));
}

// b = 4: binary search over T_k = (k + 1/2) s, each computed exactly.
__device__ __forceinline__ uint32_t code4(float t, float s) {
  float lo = 0.0f;
#pragma unroll
  for (int step = 8; step >= 1; step >>= 1) {
    const float th = __fmul_rn(__fadd_rn(lo, static_cast<float>(step) - 0.5f), s);
    if (step > 1 ? t >= th : t > th) lo = __fadd_rn(lo, static_cast<float>(step));  // k odd / even
  }
  return static_cast<uint32_t>(lo);
}

template <int kBits, int kE = 0>
__device__ __forceinline__ void float_codes(uint32_t (&w)[kBits], const float (&x)[32], float z,
                                            float s, float t0, float t1, float t2) {
  if constexpr (kE < 32) {
    const float t = __fsub_rn(x[kE], z);
    if constexpr (kBits == 2)
      or_code2<(kE * 2) % 32>(w[kE / 16], t, t0, t1, t2);
    else
      w[kE / 8] |= code4(t, s) << ((kE * 4) % 32);
    float_codes<kBits, kE + 1>(w, x, z, s, t0, t1, t2);
  }
}

template <int kBits>
using CodeWord = std::conditional_t<kBits == 2, uint2, uint4>;

// Quantizes this thread's 32 values x (stored positions 32t .. 32t+31 of the row, quarter q of
// group g) and writes its codes (and, for q = 0, the group's scale and zero).
template <int kBits>
__device__ __forceinline__ void quantize_quarter(const float (&x)[32], int t, int64_t row,
                                                 int64_t groups_per_row, const RowArgs& a) {
  constexpr float kMaxq = static_cast<float>((1 << kBits) - 1);
  const int q = t & 3;
  float lo = x[0], hi = x[0];
#pragma unroll
  for (int e = 1; e < 32; ++e) lo = fminf(lo, x[e]), hi = fmaxf(hi, x[e]);
#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    lo = fminf(lo, __shfl_xor_sync(kFull, lo, off));
    hi = fmaxf(hi, __shfl_xor_sync(kFull, hi, off));
  }
  if (__any_sync(kFull, lo == 0.0f || hi == 0.0f)) {
    // The reference's scan keeps the sign of the first zero in group order.
    int first = 32;  // this thread's first zero, then its position in the group
    float sign = 0.0f;
#pragma unroll
    for (int e = 31; e >= 0; --e)
      if (x[e] == 0.0f) first = e, sign = x[e];
    first = first == 32 ? 0x7FFFFFFF : 32 * q + first;
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
      const int of = __shfl_xor_sync(kFull, first, off);
      const float os = __shfl_xor_sync(kFull, sign, off);
      if (of < first) first = of, sign = os;
    }
    if (lo == 0.0f) lo = sign;
    if (hi == 0.0f) hi = sign;
  }
  const int64_t group = row * groups_per_row + (t >> 2);
  const float l = __fmul_rn(lo, a.clip);
  const float h = __fmul_rn(hi, a.clip);
  const float range = __fdiv_rn(__fsub_rn(h, l), kMaxq);
  const uint16_t scale16 = detail::half_bits(range);
  const uint16_t zero16 = detail::half_bits(l);
  if (!detail::half_finite(scale16) || (!a.int_zero_point && !detail::half_finite(zero16))) {
    if (q == 0)
      atomicMin(reinterpret_cast<unsigned long long*>(a.bad_group),
                static_cast<unsigned long long>(group));
    return;
  }
  uint32_t w[kBits] = {};  // 32 codes of kBits bits, little-endian
  if (!a.int_zero_point) {
    if (q == 0) a.scale[group] = scale16, a.zero[group] = zero16;
    const float s = detail::half_value(scale16);
    const float z = detail::half_value(zero16);
    if (s != 0.0f) {
      const float t0 = __fmul_rn(0.5f, s), t1 = __fmul_rn(1.5f, s), t2 = __fmul_rn(2.5f, s);
      float_codes<kBits>(w, x, z, s, t0, t1, t2);
    }
  } else {
    const float s = range;
    uint32_t zp = 0;
    if (s != 0.0f) zp = detail::clamp_code(rintf(__fdiv_rn(-l, s)), kMaxq);
    if (q == 0) a.scale[group] = scale16, a.zero_int[group] = static_cast<uint8_t>(zp);
    if (s != 0.0f) {
      const float zpf = static_cast<float>(zp);
#pragma unroll
      for (int e = 0; e < 32; ++e)
        w[e * kBits / 32] |=
            detail::clamp_code(__fadd_rn(rintf(__fdiv_rn(x[e], s)), zpf), kMaxq)
            << ((e * kBits) % 32);
    }
  }
  CodeWord<kBits> out;
  if constexpr (kBits == 2)
    out = make_uint2(w[0], w[1]);
  else
    out = make_uint4(w[0], w[1], w[2], w[3]);
  *reinterpret_cast<CodeWord<kBits>*>(a.codes + (row * groups_per_row * 4 + t) * 4 * kBits) = out;
}

template <InputType kIn, int kM, int kBits>
struct RowKernel {
  static constexpr int kCols = 1 << kM;
  static constexpr int kTeam = kCols / 32;             // threads per row
  static constexpr int kRowsPerBlock = kThreads / kTeam;
  static constexpr int kBufWords = padded(kCols);      // one row's buffer
  static constexpr int kParityBytes = kRowsPerBlock * kBufWords * 4;
  static constexpr size_t kSmem = 2 * static_cast<size_t>(kParityBytes);

  // Team barrier: the block's for a team of four warps, a named barrier per team of two (teams
  // run independently), the warp's for one. Constant ids: a barrier id in a register reserves
  // all 16 and caps the blocks per SM at 4.
  __device__ static void team_sync(int team) {
    if constexpr (kTeam == kThreads) {
      __syncthreads();
    } else if constexpr (kTeam > 32) {
      if (team == 0)
        asm volatile("bar.sync 1, %0;\n" ::"n"(kTeam) : "memory");
      else
        asm volatile("bar.sync 2, %0;\n" ::"n"(kTeam) : "memory");
    } else {
      __syncwarp();
    }
  }

  // FWHT passes on row `v` (pass 1 values, loaded), ending with the rotated, scaled row in buf.
  __device__ static void rotate_into(float (&v)[32], float* buf, int team, int t, int lane,
                                     int wt, const RowArgs& a) {
    const int log2n = a.log2n;
    {
      pass_stages<0>(v, min(log2n, 5));
      if (log2n > 0 && log2n <= 5) scale_all(v, a.fwht_scale);
      float* p = buf + padded(32 * t);
#pragma unroll
      for (int e = 0; e < 32; ++e) p[e] = v[e];
    }
    if (log2n <= 5) return;
    __syncwarp();
    {
      // Pass 2: lane = bits 0-4, register = bits 5-9, warp of the team = bits 10-11.
      float* p = buf + padded(1024 * wt + lane);
#pragma unroll
      for (int e = 0; e < 32; ++e) v[e] = p[33 * e];
      pass_stages<0>(v, min(log2n - 5, 5));
      if (log2n <= 10) scale_all(v, a.fwht_scale);
#pragma unroll
      for (int e = 0; e < 32; ++e) p[33 * e] = v[e];
    }
    if constexpr (kM > 10) {
      if (log2n <= 10) return;
      team_sync(team);
      // Pass 3: lane = bits 0-4; m = 12: registers bits 5, 6, 7, 10, 11, warp bits 8-9;
      // m = 11: registers bits 5, 6, 7, 8, 10, warp bit 9.
      constexpr int kLow = kM == 12 ? 3 : 4;  // register bits below the warp's
      float* p = buf + padded((wt << (5 + kLow)) + lane);
#pragma unroll
      for (int e = 0; e < 32; ++e) v[e] = p[index3(e) + (index3(e) >> 5)];
      pass_stages<kM == 12 ? 3 : 4>(v, log2n - 10);  // register 3 or 4 holds bit 10
      scale_all(v, a.fwht_scale);
#pragma unroll
      for (int e = 0; e < 32; ++e) p[index3(e) + (index3(e) >> 5)] = v[e];
    }
  }
  // Pass 3's index offset of register e (relative to the thread's first index).
  __host__ __device__ static constexpr int index3(int e) {
    return kM == 12 ? 32 * (e & 7) + 1024 * (e >> 3) : 32 * (e & 15) + 1024 * (e >> 4);
  }

  template <int kParity>
  __device__ static void row_step(Raw<kIn>& cur, int64_t row, int64_t stride, float* smem,
                                  const uint32_t (&addr)[32], int team, int t, int lane, int wt,
                                  const RowArgs& a) {
    Raw<kIn> next;
    if (row + stride < a.rows) load_raw<kIn>(next, a.kv, (row + stride) * kCols + 32 * t);
    float v[32];
    float* buf = smem + kParity * (kParityBytes / 4) + team * kBufWords;
    widen<kIn>(cur, v);
    rotate_into(v, buf, team, t, lane, wt, a);
    team_sync(team);
#pragma unroll
    for (int e = 0; e < 32; ++e) v[e] = gather<kParity * kParityBytes>(addr[e]);
    quantize_quarter<kBits>(v, t, row, kCols / 128, a);
    cur = next;
  }
};

template <InputType kIn, int kM, int kBits>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    row_kernel(RowArgs a, const int32_t* __restrict__ perm) {
  using K = RowKernel<kIn, kM, kBits>;
  extern __shared__ float smem[];
  const int tid = static_cast<int>(threadIdx.x);
  const int team = tid / K::kTeam, t = tid % K::kTeam;
  const int lane = tid & 31, wt = t >> 5;
  // Shared address of stored position 32t + e in this team's parity-0 buffer.
  uint32_t addr[32];
  const uint32_t base =
      static_cast<uint32_t>(__cvta_generic_to_shared(smem + team * K::kBufWords));
#pragma unroll
  for (int e = 0; e < 32; ++e) {
    const int p = 32 * t + e;
    addr[e] = base + 4u * static_cast<uint32_t>(padded(perm ? perm[p] : p));
  }
  const int64_t stride = static_cast<int64_t>(gridDim.x) * K::kRowsPerBlock;
  int64_t row = static_cast<int64_t>(blockIdx.x) * K::kRowsPerBlock + team;
  Raw<kIn> cur;
  if (row < a.rows) load_raw<kIn>(cur, a.kv, row * K::kCols + 32 * t);
  while (row < a.rows) {  // team-uniform: the barriers are per team
    K::template row_step<0>(cur, row, stride, smem, addr, team, t, lane, wt, a);
    row += stride;
    if (row >= a.rows) break;
    K::template row_step<1>(cur, row, stride, smem, addr, team, t, lane, wt, a);
    row += stride;
  }
}

template <InputType kIn, int kM, int kBits>
void launch_row(const RowArgs& a, const int32_t* perm, cudaStream_t stream) {
  using K = RowKernel<kIn, kM, kBits>;
  static bool raised = false;
  if (!raised) {
    check(cudaFuncSetAttribute(row_kernel<kIn, kM, kBits>,
                               cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(K::kSmem)),
          "rotate_quantize rows: shared memory limit");
    raised = true;
  }
  int device = 0, sms = 0, per_sm = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "SM count");
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, row_kernel<kIn, kM, kBits>,
                                                      kThreads, K::kSmem),
        "rotate_quantize rows: occupancy");
  int64_t blocks = static_cast<int64_t>(sms) * (per_sm > 0 ? per_sm : 1);
  const int64_t needed = (a.rows + K::kRowsPerBlock - 1) / K::kRowsPerBlock;
  if (blocks > needed) blocks = needed;
  row_kernel<kIn, kM, kBits>
      <<<static_cast<unsigned>(blocks), kThreads, K::kSmem, stream>>>(a, perm);
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
  RowArgs a{kv,    l.rows, log2n, f.fwht_scale, l.clip,   l.int_zero_point,
            codes, scale,  zero,  zero_int,     bad_group};
  switch (f.input) {
    case InputType::F32: dispatch_cols<InputType::F32>(a, m, l.bits, f.perm, stream); break;
    case InputType::F16: dispatch_cols<InputType::F16>(a, m, l.bits, f.perm, stream); break;
    case InputType::BF16: dispatch_cols<InputType::BF16>(a, m, l.bits, f.perm, stream); break;
  }
  return true;
}

}  // namespace kvq::cuda
