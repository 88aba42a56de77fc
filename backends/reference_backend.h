// The reference backend: reference/ itself behind the Backend interface.
#pragma once

#include <memory>

#include "backends/backend.h"

namespace kvq {

std::unique_ptr<Backend> make_reference_backend();

// The reference definition of the fused append path: widen, rotate, quantize (docs/spec.md §2, §3).
// Other backends must match it bit for bit.
Quantized reference_rotate_quantize(const TensorView& kv, const KvShape& shape,
                                    const RotateQuantizeParams& params);

}  // namespace kvq
