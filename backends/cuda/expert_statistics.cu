// expert_statistics (docs/spec.md §5): m[e] = max over routed (token, slot) entries of down_absmax,
// first occurrence on ties. One thread per entry does a 64-bit atomicMax of
// (max_abs bits << 32 | ~flat index) into its expert's key; the host decodes the keys. Input
// validation (expert ids in range, non-negative values) is the backend's, before the launch.
#include <cuda_runtime.h>

#include "backends/cuda/cuda_error.h"
#include "backends/cuda/kernels.h"

namespace kvq::cuda {

namespace {

__global__ void expert_key_kernel(const int32_t* __restrict__ ids,
                                  const float* __restrict__ down_absmax, int64_t count,
                                  unsigned long long* key) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // max_abs >= 0 (checked on the host), so its bits order like its value; the low word
    // ~i makes the lowest (token, slot) index win among equal values, and any routed entry
    // beats the zero key of a never-routed expert.
    const unsigned long long k =
        (static_cast<unsigned long long>(__float_as_uint(down_absmax[i])) << 32) |
        static_cast<unsigned long long>(0xFFFFFFFFu - static_cast<uint32_t>(i));
    atomicMax(key + ids[i], k);
  }
}

}  // namespace

void expert_statistics(const int32_t* ids, const float* down_absmax, int64_t count,
                       unsigned long long* key, cudaStream_t stream) {
  if (count == 0) return;
  int64_t blocks = (count + 255) / 256;
  if (blocks > 65536) blocks = 65536;
  expert_key_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(ids, down_absmax, count,
                                                                       key);
  check_launch("expert_statistics kernel");
}

}  // namespace kvq::cuda
