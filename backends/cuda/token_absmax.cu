// token_absmax (docs/spec.md §4): per row max |h| and its lowest channel, one warp per row. Each
// lane scans its strided channels in order keeping the first maximum, then the warp reduces
// (value, channel) pairs preferring the lower channel on equal values, which is the reference's
// strict-> scan result. 4 bytes read per element; the floor is the copy bandwidth.
#include <cuda_runtime.h>

#include "backends/cuda/cuda_error.h"
#include "backends/cuda/kernels.h"

namespace kvq::cuda {

namespace {

__global__ void token_absmax_kernel(const float* __restrict__ hidden, int64_t tokens,
                                    int64_t hidden_size, float* absmax, int32_t* argmax) {
  const int lane = static_cast<int>(threadIdx.x & 31u);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t t = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; t < tokens;
       t += warps) {
    const float* row = hidden + t * hidden_size;
    float best = -1.0f;
    int64_t arg = INT64_MAX;
    for (int64_t c = lane; c < hidden_size; c += 32) {
      const float a = fabsf(__ldcs(row + c));
      if (a > best) best = a, arg = c;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float ob = __shfl_xor_sync(0xFFFFFFFFu, best, off);
      const int64_t oa = __shfl_xor_sync(0xFFFFFFFFu, arg, off);
      if (ob > best || (ob == best && oa < arg)) best = ob, arg = oa;
    }
    if (lane == 0) {
      absmax[t] = best;
      argmax[t] = static_cast<int32_t>(arg);
    }
  }
}

}  // namespace

void token_absmax(const float* hidden, int64_t tokens, int64_t hidden_size, float* absmax,
                  int32_t* argmax, cudaStream_t stream) {
  if (tokens == 0) return;
  int64_t blocks = (tokens + 7) / 8;
  if (blocks > 65536) blocks = 65536;
  token_absmax_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(hidden, tokens,
                                                                         hidden_size, absmax,
                                                                         argmax);
  check_launch("token_absmax kernel");
}

}  // namespace kvq::cuda
