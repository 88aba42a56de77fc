// The warp-per-row fused append kernel (rotate_quantize_row.cu) for rows of 1024, 2048 or 4096
// channels, groups of 128 on the token axis, 2 or 4 bits; rotate_quantize_token tries it first.
#pragma once

#include "backends/cuda/kernels.h"

namespace kvq::cuda {

// Enqueues the kernel and returns true when the shape is one it handles; false (nothing
// enqueued) otherwise.
bool rotate_quantize_rows(const void* kv, const FusedAppend& append,
                          const DeviceQuantLayout& layout, uint8_t* codes, uint16_t* scale,
                          uint16_t* zero, uint8_t* zero_int, int64_t* bad_group,
                          cudaStream_t stream);

}  // namespace kvq::cuda
