// CUDA runtime errors as kvq::Error (STYLE.md rule 5): what failed, where, and CUDA's message.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "reference/error.h"

namespace kvq::cuda {

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw Error(std::string("cuda: ") + what + ": " + cudaGetErrorName(status) + " (" +
                cudaGetErrorString(status) + ")");
}

// After a launch: the launch's own error, then (synchronously) any fault it raised.
inline void check_launch(const char* what) { check(cudaGetLastError(), what); }

}  // namespace kvq::cuda
