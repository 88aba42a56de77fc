// expert_statistics for the AVX backends (SPEC.md §5): OpenMP over token ranges, merged in
// token order; the statistic is a max, so no ISA-specific kernel is needed.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "reference/experts.h"

namespace kvq::avx {

std::vector<ExpertStat> expert_statistics(std::span<const int32_t> ids,
                                          std::span<const float> down_absmax,
                                          std::span<const int32_t> down_argmax, int64_t tokens,
                                          int64_t top_k, int64_t num_experts);

}  // namespace kvq::avx
