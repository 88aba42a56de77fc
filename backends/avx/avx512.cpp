// The AVX-512 kernel table: the shared bodies (kernel_table.h) instantiated on
// kvq::avx512::Simd. Compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma -mf16c
// (backends/avx/meson.build); runs only after avx_backend.cpp found those features by CPUID.
#include "backends/avx/simd_avx512.h"
// The bodies below are instantiated on the traits above.
#include "backends/avx/kernel_table.h"

namespace kvq::avx {

const Kernels& avx512_kernels() {
  return kernel_table<kvq::avx512::Simd>();
}

}  // namespace kvq::avx
