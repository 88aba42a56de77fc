// The kernel table (kernels.h) of one ISA: every shared body instantiated on the traits S.
// Included only by the ISA units, avx2.cpp and avx512.cpp, after their traits header; the
// instantiations are named after S, so each unit's copy keeps its own -m flags.
#pragma once

#include "backends/avx/attention_codes.h"
#include "backends/avx/fwht.h"
#include "backends/avx/kernels.h"
#include "backends/avx/quantize.h"
#include "backends/avx/rotate_quantize.h"
#include "backends/avx/token_absmax.h"

namespace kvq::avx {

template <class S>
const Kernels& kernel_table() {
  static const Kernels table = {
      .fwht = &fwht_kernel<S>,
      .reorder = &reorder_kernel<S>,
      .rotate = &rotate_kernel<S>,
      .quantize = &quantize_kernel<S>,
      .dequantize = &dequantize_kernel<S>,
      .rotate_quantize = &rotate_quantize_kernel<S>,
      .token_absmax = &token_absmax_kernel<S>,
      .attention_decode = &attention_decode_kernel<S>,
      .to_half = &S::to_half,
      .from_half = &S::from_half,
  };
  return table;
}

}  // namespace kvq::avx
