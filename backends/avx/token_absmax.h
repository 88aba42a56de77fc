// SIMD twin of reference token_absmax (reference/sinks.cpp, docs/spec.md §4): per lane the running
// max of |h| with the channel where it first occurs (strict >), then the max over lanes and the
// lowest channel among the lanes holding it — the reference's "lowest channel on ties".
// Bytes moved: 4 read per element.
#pragma once

#include <cstdint>

#include "backends/avx/quantize.h"

namespace kvq::avx {

template <class S>
int64_t token_absmax_kernel(const float* h, int64_t rows, int64_t cols, float* absmax,
                            int32_t* argmax) {
  using V = typename S::V;
  using VI = typename S::VI;
  constexpr int W = S::W;
  int64_t bad = INT64_MAX;
#pragma omp parallel for schedule(static) reduction(min : bad) if (rows * cols > 65536)
  for (int64_t t = 0; t < rows; ++t) {
    const float* row = h + t * cols;
    V best = S::set1(-1.0f);  // below any |h|, so the first chunk always sets it
    VI arg = S::seti(0);
    VI cur = S::iota();
    V nonfinite = S::zero();
    const VI step = S::seti(W);
    for (int64_t k = 0; k < cols; k += W) {
      const int m = cols - k < W ? static_cast<int>(cols - k) : W;
      // Lanes past the row read 0: they never beat a real lane, and a tie at 0 resolves to
      // the real lane's lower channel below.
      const V x = m == W ? S::load(row + k) : S::load_n(row + k, m, S::zero());
      nonfinite = S::nonfinite_acc(nonfinite, x);
      const V a = S::abs(x);
      const unsigned up = S::gt_lanes(a, best);
      best = S::select(up, a, best);
      arg = S::select_i(up, cur, arg);
      cur = S::addi(cur, step);
    }
    if (S::any_bits(nonfinite)) {
      const int64_t k = t * cols + first_nonfinite(row, cols);
      if (k < bad) bad = k;
      continue;
    }
    const float m = S::reduce_max(best);
    const unsigned at = S::eq_lanes(best, S::set1(m));
    alignas(64) int32_t idx[W];
    S::store_i(idx, arg);
    int32_t lowest = INT32_MAX;
    for (int l = 0; l < W; ++l)
      if ((at & (1u << l)) && idx[l] < lowest) lowest = idx[l];
    absmax[t] = m;
    argmax[t] = lowest;
  }
  return bad == INT64_MAX ? -1 : bad;
}

}  // namespace kvq::avx
