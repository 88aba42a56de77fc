// Normalized fast Walsh-Hadamard transform, written exactly as docs/spec.md §1 states it.
#include "reference/fwht.h"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "reference/error.h"

namespace kvq {

namespace {

constexpr int kMaxFwhtSize = 32768;  // docs/spec.md §1: n = 2^m, 1 <= m <= 15

void check_size(int n) {
  if (n < 2 || n > kMaxFwhtSize || (n & (n - 1)) != 0)
    throw Error("fwht: size n = " + std::to_string(n) +
                " must be a power of two between 2 and 32768");
}

// One block of n values: stages in ascending h, one add or subtract per butterfly output,
// then the single normalizing multiply (docs/spec.md §1).
void fwht_block(float* x, int n, float s) {
  for (int h = 1; h < n; h *= 2)
    for (int i = 0; i < n; i += 2 * h)
      for (int j = i; j < i + h; ++j) {
        const float a = x[j];
        const float b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
  for (int k = 0; k < n; ++k) x[k] = x[k] * s;
}

}  // namespace

float fwht_scale(int n) {
  check_size(n);
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)));
}

void fwht(std::span<float> x, int n) {
  check_size(n);
  if (x.size() % static_cast<size_t>(n) != 0)
    throw Error("fwht: input has " + std::to_string(x.size()) +
                " values, not a multiple of the transform size n = " + std::to_string(n));
  const float s = fwht_scale(n);
  const auto blocks = static_cast<int64_t>(x.size() / static_cast<size_t>(n));
  float* data = x.data();
  // Blocks are independent; each block's arithmetic is fixed, so the result does not depend
  // on the thread count.
#pragma omp parallel for schedule(static) if (blocks > 64)
  for (int64_t blk = 0; blk < blocks; ++blk) fwht_block(data + blk * n, n, s);
}

}  // namespace kvq
