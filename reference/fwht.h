// Normalized fast Walsh-Hadamard transform, docs/spec.md §1.
#pragma once

#include <span>

namespace kvq {

// Transforms every consecutive block of n values of x in place (x.size() must be a multiple of
// n; n = 2^m, 1 <= m <= 15). Stages in ascending h, then one multiply by (float)(1/sqrt(n)).
void fwht(std::span<float> x, int n);

// (float)(1.0 / sqrt((double)n)): the one normalization factor every backend uses.
float fwht_scale(int n);

}  // namespace kvq
