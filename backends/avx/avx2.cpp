// The AVX2 kernel table: the shared bodies (kernel_table.h) instantiated on kvq::avx2::Simd.
// Compiled with -mavx2 -mfma -mf16c (backends/avx/meson.build); runs only after
// avx_backend.cpp found those features by CPUID.
#include "backends/avx/simd_avx2.h"
// The bodies below are instantiated on the traits above.
#include "backends/avx/kernel_table.h"

namespace kvq::avx {

const Kernels& avx2_kernels() {
  return kernel_table<kvq::avx2::Simd>();
}

}  // namespace kvq::avx
