// Normalized FWHT (docs/spec.md §1) on the GPU. A block loads a tile of whole transforms (4096
// floats, or one transform when n > 4096) into shared memory with 16-byte loads, runs the
// radix-8 passes of fwht_tile.cuh and stores x * s with 16-byte stores. Bytes moved: 8 per
// element (fp32 read + write), so the floor is the device copy bandwidth; launch: one block of
// 256 threads per tile, dynamic shared memory = tile size (up to 128 KiB for n = 32768).
#include <cuda_runtime.h>

#include "backends/cuda/cuda_error.h"
#include "backends/cuda/fwht_tile.cuh"
#include "backends/cuda/kernels.h"

namespace kvq::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMinTile = 4096;

__global__ void __launch_bounds__(kThreads) fwht_kernel(float* x, int64_t count, int tile_len,
                                                        int log2n, float scale) {
  extern __shared__ float tile[];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * tile_len;
  const int len = static_cast<int>(count - base < tile_len ? count - base : tile_len);
  float* src = x + base;
  const int vec = len / 4;
  const float4* src4 = reinterpret_cast<const float4*>(src);
  for (int i = static_cast<int>(threadIdx.x); i < vec; i += kThreads) {
    const float4 v = __ldcs(src4 + i);
    tile[detail::pad(4 * i)] = v.x;
    tile[detail::pad(4 * i + 1)] = v.y;
    tile[detail::pad(4 * i + 2)] = v.z;
    tile[detail::pad(4 * i + 3)] = v.w;
  }
  for (int i = vec * 4 + static_cast<int>(threadIdx.x); i < len; i += kThreads)
    tile[detail::pad(i)] = src[i];
  __syncthreads();
  detail::fwht_tile(tile, len, log2n);
  float4* dst4 = reinterpret_cast<float4*>(src);
  for (int i = static_cast<int>(threadIdx.x); i < vec; i += kThreads) {
    float4 v;
    v.x = __fmul_rn(tile[detail::pad(4 * i)], scale);
    v.y = __fmul_rn(tile[detail::pad(4 * i + 1)], scale);
    v.z = __fmul_rn(tile[detail::pad(4 * i + 2)], scale);
    v.w = __fmul_rn(tile[detail::pad(4 * i + 3)], scale);
    __stcs(dst4 + i, v);
  }
  for (int i = vec * 4 + static_cast<int>(threadIdx.x); i < len; i += kThreads)
    src[i] = __fmul_rn(tile[detail::pad(i)], scale);
}

}  // namespace

void fwht(float* x, int64_t count, int n, float scale, cudaStream_t stream) {
  if (count <= 0) return;
  int log2n = 0;
  while ((1 << log2n) < n) ++log2n;
  const int tile_len = n > kMinTile ? n : kMinTile;
  const int64_t blocks = (count + tile_len - 1) / tile_len;
  const size_t smem = static_cast<size_t>(detail::padded_size(tile_len)) * sizeof(float);
  static bool raised = false;
  if (!raised) {  // tiles above 48 KiB need the opt-in (n = 16384, 32768)
    check(cudaFuncSetAttribute(fwht_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               detail::padded_size(32768) * static_cast<int>(sizeof(float))),
          "fwht: shared memory limit");
    raised = true;
  }
  fwht_kernel<<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(x, count, tile_len,
                                                                         log2n, scale);
  check_launch("fwht kernel");
}

}  // namespace kvq::cuda
