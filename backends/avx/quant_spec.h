// The kernels' description (kernels.h QuantSpec) of a reference quantization layout
// (reference/quantize.h GroupLayout). Compiled without ISA flags.
#pragma once

#include "backends/avx/kernels.h"
#include "reference/quantize.h"

namespace kvq::avx {

QuantSpec quant_spec(const GroupLayout& l, const QuantParams& p);

}  // namespace kvq::avx
