// The AVX2 kernel table: the shared bodies instantiated on kvq::avx2::Simd. Compiled with
// -mavx2 -mfma -mf16c (backends/avx/meson.build); runs only
// after avx_backend.cpp found those features by CPUID.
#include "backends/avx/simd_avx2.h"
// The bodies below are instantiated on the traits above.
#include "backends/avx/fwht.h"
#include "backends/avx/kernels.h"
#include "backends/avx/quantize.h"
#include "backends/avx/rotate_quantize.h"
#include "backends/avx/token_absmax.h"

namespace kvq::avx {

namespace {
using S = kvq::avx2::Simd;
uint16_t to_half(float f) {
  return S::to_half(f);
}
float from_half(uint16_t h) {
  return S::from_half(h);
}
}  // namespace

const Kernels& avx2_kernels() {
  static const Kernels table = {
      &fwht_kernel<S>,
      &reorder_kernel<S>,
      &rotate_kernel<S>,
      &quantize_kernel<S>,
      &dequantize_kernel<S>,
      &rotate_quantize_kernel<S>,
      &token_absmax_kernel<S>,
      &to_half,
      &from_half,
  };
  return table;
}

}  // namespace kvq::avx
