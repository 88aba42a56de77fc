// The fused append path (docs/spec.md §2 + §3, token axis) in one kernel: each block walks a
// grid-stride sequence of token tiles; per tile it widens the fp16/bf16/fp32 rows into shared
// memory (16-byte loads), runs the grouped or per-head FWHT in place (fwht_tile.cuh), multiplies
// by fwht_scale(n), and quantizes + packs every group with one warp per group, reading element j
// of a reordered row as tile[perm[j]] (perm staged once per block in shared memory). Global
// traffic is one read of K/V and one write of codes, scales and zeros:
// 2 + b/8 + 4/G bytes per element for fp16 input (2.27 at b = 2, G = 128).
// Launch: 256 threads, grid = as many blocks as fit on every SM (capped by the tile count);
// shared memory = padded tile (max(1, 4096 / channels) tokens) + the permutation.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "backends/cuda/cuda_error.h"
#include "backends/cuda/fwht_tile.cuh"
#include "backends/cuda/kernels.h"
#include "backends/cuda/quantize_group.cuh"
#include "backends/cuda/rotate_quantize_row.h"

namespace kvq::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kTileFloats = 4096;

template <InputType kIn>
__device__ __forceinline__ void load_rows(const void* kv, int64_t first, int count, float* tile) {
  // count is a multiple of 8 whenever channels is (checked by the launcher), so 16-byte
  // vectors stay inside the tile; the scalar loop covers any remainder.
  if constexpr (kIn == InputType::F32) {
    const float* src = static_cast<const float*>(kv) + first;
    const int vec = count / 4;
    const float4* s4 = reinterpret_cast<const float4*>(src);
    for (int i = static_cast<int>(threadIdx.x); i < vec; i += kThreads) {
      const float4 v = __ldcs(s4 + i);
      tile[detail::pad(4 * i)] = v.x;
      tile[detail::pad(4 * i + 1)] = v.y;
      tile[detail::pad(4 * i + 2)] = v.z;
      tile[detail::pad(4 * i + 3)] = v.w;
    }
    for (int i = vec * 4 + static_cast<int>(threadIdx.x); i < count; i += kThreads)
      tile[detail::pad(i)] = src[i];
  } else {
    const uint16_t* src = static_cast<const uint16_t*>(kv) + first;
    const int vec = count / 8;
    const uint4* s8 = reinterpret_cast<const uint4*>(src);
    for (int i = static_cast<int>(threadIdx.x); i < vec; i += kThreads) {
      const uint4 raw = __ldcs(s8 + i);
      const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
      float out[8];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const uint16_t a = static_cast<uint16_t>(w[k] & 0xFFFFu);
        const uint16_t b = static_cast<uint16_t>(w[k] >> 16);
        if constexpr (kIn == InputType::F16) {
          out[2 * k] = __half2float(__ushort_as_half(a));
          out[2 * k + 1] = __half2float(__ushort_as_half(b));
        } else {
          out[2 * k] = __uint_as_float(static_cast<uint32_t>(a) << 16);
          out[2 * k + 1] = __uint_as_float(static_cast<uint32_t>(b) << 16);
        }
      }
#pragma unroll
      for (int k = 0; k < 8; ++k) tile[detail::pad(8 * i + k)] = out[k];
    }
    for (int i = vec * 8 + static_cast<int>(threadIdx.x); i < count; i += kThreads) {
      const uint16_t h = src[i];
      tile[detail::pad(i)] = kIn == InputType::F16 ? __half2float(__ushort_as_half(h))
                                      : __uint_as_float(static_cast<uint32_t>(h) << 16);
    }
  }
}

template <InputType kIn>
__global__ void __launch_bounds__(kThreads)
    rotate_quantize_kernel(const void* kv, FusedAppend a, DeviceQuantLayout l, int tile_tokens,
                           uint8_t* codes, uint16_t* scale, uint16_t* zero, uint8_t* zero_int,
                           int64_t* bad_group) {
  extern __shared__ float4 smem4[];
  const int cols = static_cast<int>(l.cols);
  float* tile = reinterpret_cast<float*>(smem4);
  int32_t* perm = reinterpret_cast<int32_t*>(tile + detail::padded_size(tile_tokens * cols));
  const bool reordered = a.perm != nullptr;
  if (reordered)
    for (int j = static_cast<int>(threadIdx.x); j < cols; j += kThreads) perm[j] = a.perm[j];
  int log2n = 0;
  while ((1 << log2n) < a.fwht_n) ++log2n;
  const detail::GroupParams p{l.bits, l.clip, l.int_zero_point};
  const int warp = static_cast<int>(threadIdx.x / 32);
  const int64_t full_bytes = (l.group * l.bits + 7) / 8;
  const int64_t tail = l.cols - (l.groups_per_line - 1) * l.group;
  const int64_t line_bytes = (l.groups_per_line - 1) * full_bytes + (tail * l.bits + 7) / 8;
  const int64_t tiles = (l.rows + tile_tokens - 1) / tile_tokens;
  for (int64_t tix = blockIdx.x; tix < tiles; tix += gridDim.x) {
    const int64_t row0 = tix * tile_tokens;
    const int rows = static_cast<int>(l.rows - row0 < tile_tokens ? l.rows - row0 : tile_tokens);
    const int len = rows * cols;
    load_rows<kIn>(kv, row0 * cols, len, tile);
    __syncthreads();
    if (a.rotation != 0) detail::fwht_tile(tile, len, log2n);
    // The normalizing multiply of docs/spec.md §1 happens as the quantizer reads each element
    // (the same single rounding, one shared-memory pass fewer).
    const float s = a.fwht_scale;
    const bool scaled = a.rotation != 0;
    const int groups = rows * static_cast<int>(l.groups_per_line);
    const int gpl = static_cast<int>(l.groups_per_line);
    for (int lg = warp; lg < groups; lg += kThreads / 32) {
      const int r = lg / gpl;
      const int gi = lg - r * gpl;
      const int first = gi * static_cast<int>(l.group);
      const int n = static_cast<int>(cols - first < l.group ? cols - first : l.group);
      const int64_t g = (row0 + r) * l.groups_per_line + gi;
      const int64_t off = (row0 + r) * line_bytes + gi * full_bytes;
      const int rbase = r * cols;
      bool ok;
      if (reordered) {
        const int32_t* pj = perm + first;
        ok = detail::quantize_group_warp(
            [tile, pj, rbase, s, scaled](int k) {
              const float v = tile[detail::pad(rbase + pj[k])];
              return scaled ? __fmul_rn(v, s) : v;
            },
            n, p, codes + off, scale + g, zero + g, zero_int + g);
      } else {
        const int gbase = rbase + first;
        ok = detail::quantize_group_warp(
            [tile, gbase, s, scaled](int k) {
              const float v = tile[detail::pad(gbase + k)];
              return scaled ? __fmul_rn(v, s) : v;
            },
            n, p, codes + off, scale + g, zero + g, zero_int + g);
      }
      if (!ok && (threadIdx.x & 31u) == 0)
        atomicMin(reinterpret_cast<unsigned long long*>(bad_group),
                  static_cast<unsigned long long>(g));
    }
    __syncthreads();
  }
}

__global__ void widen_kernel(const void* kv, InputType in, int64_t count, float* out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (in == InputType::F32) {
      out[i] = static_cast<const float*>(kv)[i];
    } else {
      const uint16_t h = static_cast<const uint16_t*>(kv)[i];
      out[i] = in == InputType::F16 ? __half2float(__ushort_as_half(h))
                                    : __uint_as_float(static_cast<uint32_t>(h) << 16);
    }
  }
}

template <InputType kIn>
void launch(const void* kv, const FusedAppend& a, const DeviceQuantLayout& l, uint8_t* codes,
            uint16_t* scale, uint16_t* zero, uint8_t* zero_int, int64_t* bad_group,
            cudaStream_t stream) {
  const int cols = static_cast<int>(l.cols);
  const int tile_tokens = cols >= kTileFloats ? 1 : kTileFloats / cols;
  const size_t smem = static_cast<size_t>(detail::padded_size(tile_tokens * cols)) * sizeof(float) +
                      (a.perm ? static_cast<size_t>(cols) * sizeof(int32_t) : 0);
  static bool raised = false;
  if (!raised) {
    check(cudaFuncSetAttribute(rotate_quantize_kernel<kIn>,
                               cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024),
          "rotate_quantize: shared memory limit");
    raised = true;
  }
  int device = 0, sms = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "SM count");
  const int64_t tiles = (l.rows + tile_tokens - 1) / tile_tokens;
  int per_sm = 1;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, rotate_quantize_kernel<kIn>,
                                                      kThreads, smem),
        "rotate_quantize: occupancy");
  int64_t blocks = static_cast<int64_t>(sms) * (per_sm > 0 ? per_sm : 1);
  if (blocks > tiles) blocks = tiles;
  rotate_quantize_kernel<kIn><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(
      kv, a, l, tile_tokens, codes, scale, zero, zero_int, bad_group);
  check_launch("rotate_quantize kernel");
}

}  // namespace

void rotate_quantize_token(const void* kv, const FusedAppend& a, const DeviceQuantLayout& l,
                           uint8_t* codes, uint16_t* scale, uint16_t* zero, uint8_t* zero_int,
                           int64_t* bad_group, cudaStream_t stream) {
  if (l.rows == 0 || l.cols == 0) return;
  if (rotate_quantize_rows(kv, a, l, codes, scale, zero, zero_int, bad_group, stream)) return;
  switch (a.input) {
    case InputType::F32: launch<InputType::F32>(kv, a, l, codes, scale, zero, zero_int, bad_group, stream); break;
    case InputType::F16: launch<InputType::F16>(kv, a, l, codes, scale, zero, zero_int, bad_group, stream); break;
    case InputType::BF16: launch<InputType::BF16>(kv, a, l, codes, scale, zero, zero_int, bad_group, stream); break;
  }
}

void widen(const void* kv, InputType in, int64_t count, float* out, cudaStream_t stream) {
  if (count == 0) return;
  int64_t blocks = (count + 255) / 256;
  if (blocks > 65536) blocks = 65536;
  widen_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(kv, in, count, out);
  check_launch("widen kernel");
}

}  // namespace kvq::cuda
