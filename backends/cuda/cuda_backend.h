// The CUDA backend (backends/cuda/): the Backend interface on an NVIDIA GPU. Host spans in,
// host results out: each op validates its input exactly as the reference does, copies to the
// device, runs the kernels of kernels.h and copies back. Exact ops equal the reference bit for
// bit; attention_decode is a tolerance op (docs/spec.md §7).
#pragma once

#include <string>

#include "backends/backend.h"

namespace kvq {

// "cuda": available when cudaGetDeviceCount() > 0; detail = device name, SM count and compute
// capability, or the reason there is none ("no CUDA device: ...").
BackendEntry cuda_backend_entry();

// The name of device 0, or "" when there is no CUDA device (for RunInfo::gpu).
std::string cuda_device_name();

}  // namespace kvq
