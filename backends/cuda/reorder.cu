// Channel permutation of docs/spec.md §2 (exact: a gather or scatter of fp32 values). One thread
// per
// output element of a row chunk; the gather side reads perm[j] (cached) and x[t, perm[j]] (a row
// is at most 128 KiB, so the scattered reads hit L1/L2). 8 bytes per element + perm reads.
#include <cuda_runtime.h>

#include "backends/cuda/cuda_error.h"
#include "backends/cuda/kernels.h"

namespace kvq::cuda {

namespace {

__global__ void reorder_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t rows,
                               int64_t channels, const int32_t* __restrict__ perm, bool inverse) {
  const int64_t total = rows * channels;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / channels, j = i % channels;
    const int64_t p = __ldg(perm + j);
    if (inverse)
      out[t * channels + p] = x[i];  // out[t, perm[j]] = y[t, j]
    else
      out[i] = x[t * channels + p];  // stored[t, j] = x[t, perm[j]]
  }
}

}  // namespace

void reorder(const float* x, float* out, int64_t rows, int64_t channels, const int32_t* perm,
             bool inverse, cudaStream_t stream) {
  const int64_t total = rows * channels;
  if (total <= 0) return;
  int64_t blocks = (total + 255) / 256;
  if (blocks > 65536) blocks = 65536;
  reorder_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(x, out, rows, channels, perm,
                                                                    inverse);
  check_launch("reorder kernel");
}

}  // namespace kvq::cuda
