// The in-shared-memory FWHT of docs/spec.md §1 that fwht.cu and rotate_quantize.cu share: a tile of
// `len` floats (a whole number of transforms of size n = 2^m) is transformed in radix-8 passes.
// Pass p covers stages h = 2^(3p), 2^(3p+1), 2^(3p+2): each thread loads the 8 values a group of
// those stages touches into registers, runs the stages in ascending h (one add or subtract per
// butterfly output) and stores them back. Stages thus stay in ascending h across passes, which
// is all docs/spec.md §1 asks for bit-exactness; the normalizing multiply is done by the caller
// after the last pass. Shared traffic: 8 bytes per element per pass (ceil(m/3) passes) against 8
// bytes per element of global traffic (fp32 in and out), so shared bandwidth is not the limit.
#pragma once

#include <cstdint>

namespace kvq::cuda::detail {

// Shared-memory index of logical element i: one pad word per 32 keeps the strided accesses of
// the first passes (stride 1 groups of 8, stride 8) and the 4-wide reads of the quantizer free
// of bank conflicts. A tile of len floats occupies padded_size(len) words.
__device__ __forceinline__ int pad(int i) { return i + (i >> 5); }
__host__ __device__ constexpr int padded_size(int len) { return len + len / 32 + 1; }

// r in-register stages (r <= 3) of the group starting at idx0 with stride 2^b0.
template <int R>
__device__ __forceinline__ void fwht_group(float* tile, int idx0, int stride) {
  constexpr int kCount = 1 << R;
  float v[kCount];
#pragma unroll
  for (int k = 0; k < kCount; ++k) v[k] = tile[pad(idx0 + k * stride)];
#pragma unroll
  for (int h = 1; h < kCount; h *= 2)
#pragma unroll
    for (int k = 0; k < kCount; ++k)
      if ((k & h) == 0) {
        const float a = v[k];
        const float b = v[k + h];
        v[k] = __fadd_rn(a, b);
        v[k + h] = __fsub_rn(a, b);
      }
#pragma unroll
  for (int k = 0; k < kCount; ++k) tile[pad(idx0 + k * stride)] = v[k];
}

// All stages of every n-point transform in the padded tile of len floats; ends with __syncthreads. Every thread
// of the block must call it.
__device__ inline void fwht_tile(float* tile, int len, int log2n) {
  for (int b0 = 0; b0 < log2n; b0 += 3) {
    const int r = log2n - b0 < 3 ? log2n - b0 : 3;
    const int groups = len >> r;
    const int stride = 1 << b0;
    for (int g = static_cast<int>(threadIdx.x); g < groups; g += static_cast<int>(blockDim.x)) {
      const int low = g & (stride - 1);
      const int high = g >> b0;
      const int idx0 = (high << (b0 + r)) | low;
      if (r == 3)
        fwht_group<3>(tile, idx0, stride);
      else if (r == 2)
        fwht_group<2>(tile, idx0, stride);
      else
        fwht_group<1>(tile, idx0, stride);
    }
    __syncthreads();
  }
}

}  // namespace kvq::cuda::detail
