// The AVX backends' view of a DecodeCache (reference/attention.h) for the decode-attention
// kernel (kernels.h DecodeProblem): per token, where its K and V rows come from (a quantized
// part and row, or the fp16 kept row), its sparse outliers, the inverse permutation of the
// grouped K rotation and the RoPE frequencies. Compiled without ISA flags.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "backends/avx/kernels.h"
#include "reference/attention.h"

namespace kvq::avx {

class DecodeTables {
 public:
  // Validates q and the cache by the reference's rules; on any violation the reference itself
  // is run to throw its exact error (errors are rare, and one wording is kept in one place).
  DecodeTables(std::span<const float> q, int64_t q_heads, const DecodeCache& cache);
  DecodeTables(const DecodeTables&) = delete;
  DecodeTables& operator=(const DecodeTables&) = delete;

  // Points into this object and the cache: valid while both live.
  const DecodeProblem& problem() const { return problem_; }

  struct Side {
    std::vector<DecodePart> parts;
    std::vector<int32_t> part;
    std::vector<int64_t> row;
    std::vector<int64_t> outlier_begin;
    std::vector<int32_t> outlier_col;
    std::vector<uint16_t> outlier_value;
    std::vector<int32_t> unperm;
  };

 private:
  Side k_, v_;
  std::vector<double> rope_freq_;
  DecodeProblem problem_;
};

}  // namespace kvq::avx
