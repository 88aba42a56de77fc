// SIMD twins of reference reorder / rotate_k / rotate_v (reference/rotation.cpp, SPEC.md §2)
// and of the fused append path reference_rotate_quantize (backends/reference_backend.cpp):
// per token, widen F16/BF16/F32 into an L1-resident row buffer, grouped FWHT on it (fwht.h),
// gather through the permutation, then per group min/max, fp16 scale/zero, codes and packing
// (quantize.h) — one pass over the input, no full-size intermediate. The channel axis works on
// blocks of G rotated tokens (G * channels floats per thread), since its groups span tokens.
// Bytes moved per element (2-bit, fp16 in): 2 read + 0.25 written (+ 4/G scale and zero).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "backends/avx/fwht.h"
#include "backends/avx/kernels.h"
#include "backends/avx/quantize.h"

namespace kvq::avx {

// Per-thread scratch, 64-byte aligned (std::aligned_alloc needs a multiple of the alignment).
static inline float* scratch_floats(int64_t count) {
  const size_t bytes =
      (static_cast<size_t>(count > 0 ? count : 1) * sizeof(float) + 63) & ~size_t{63};
  return static_cast<float*>(std::aligned_alloc(64, bytes));
}

// Row `row` of the [rows, cols] input as fp32 into buf; false when it holds a non-finite value.
// The element type is a template parameter so the per-vector loop carries no type dispatch.
template <class S, Src kType>
inline bool widen_row_as(const void* src, int64_t row, int64_t cols, float* buf) {
  using V = typename S::V;
  V bad = S::zero();
  const int64_t base = row * cols;
  for (int64_t k = 0; k < cols; k += S::W) {
    const int m = cols - k < S::W ? static_cast<int>(cols - k) : S::W;
    V v;
    if constexpr (kType == Src::F32) {
      const float* p = static_cast<const float*>(src) + base + k;
      v = m == S::W ? S::load(p) : S::load_n(p, m, S::zero());
    } else if constexpr (kType == Src::F16) {
      v = S::load_f16_n(static_cast<const uint16_t*>(src) + base + k, m);
    } else {
      v = S::load_bf16_n(static_cast<const uint16_t*>(src) + base + k, m);
    }
    bad = S::nonfinite_acc(bad, v);
    if (m == S::W)
      S::store(buf + k, v);
    else
      S::store_n(buf + k, v, m);
  }
  return !S::any_bits(bad);
}

template <class S>
inline bool widen_row(const void* src, Src type, int64_t row, int64_t cols, float* buf) {
  switch (type) {
    case Src::F32: return widen_row_as<S, Src::F32>(src, row, cols, buf);
    case Src::F16: return widen_row_as<S, Src::F16>(src, row, cols, buf);
    default: return widen_row_as<S, Src::BF16>(src, row, cols, buf);
  }
}

template <class S>
inline void gather_row(const float* x, int64_t cols, const int32_t* perm, float* out) {
  if constexpr (!S::kFastGather) {  // scalar moves beat microcoded gathers (AMD Zen 1/2)
    for (int64_t j = 0; j < cols; ++j) out[j] = x[perm[j]];
    return;
  }
  for (int64_t j = 0; j < cols; j += S::W) {
    const int m = cols - j < S::W ? static_cast<int>(cols - j) : S::W;
    S::store_n(out + j, S::gather_n(x, perm + j, m), m);
  }
}

// Rotates the row in buf (fwht blocks, then permutation into tmp); returns the rotated row.
template <class S>
inline const float* rotate_row(float* buf, float* tmp, int64_t cols, const RowRotation& rot) {
  if (rot.n > 0) fwht_row<S>(buf, cols, rot.n, rot.scale);
  if (!rot.perm) return buf;
  gather_row<S>(buf, cols, rot.perm, tmp);
  return tmp;
}

template <class S>
void reorder_kernel(const float* x, int64_t rows, int64_t cols, const int32_t* perm, float* out) {
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
  for (int64_t t = 0; t < rows; ++t) gather_row<S>(x + t * cols, cols, perm, out + t * cols);
}

// Returns false when a thread's scratch row could not be allocated.
template <class S>
bool rotate_kernel(const float* x, int64_t rows, int64_t cols, const RowRotation& rot, float* out) {
  int oom = 0;
#pragma omp parallel reduction(max : oom) if (rows * cols > 65536)
  {
    float* buf = rot.perm ? scratch_floats(cols) : nullptr;
    if (rot.perm && !buf) oom = 1;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < rows; ++t) {
      if (rot.perm && !buf) continue;
      float* dst = out + t * cols;
      float* work = rot.perm ? buf : dst;
      std::memcpy(work, x + t * cols, static_cast<size_t>(cols) * sizeof(float));
      if (rot.n > 0) fwht_row<S>(work, cols, rot.n, rot.scale);
      if (rot.perm) gather_row<S>(work, cols, rot.perm, dst);
    }
    std::free(buf);
  }
  return oom == 0;
}

template <class S>
Faults rotate_quantize_kernel(const void* src, Src type, const RowRotation& rot,
                              const QuantSpec& spec, const QuantOut& out) {
  int64_t bad_input = INT64_MAX, bad_rotated = INT64_MAX, bad_group = INT64_MAX;
  int oom = 0;
  const int64_t cols = spec.cols;
  if (!spec.channel_axis) {
    const typename S::VI shifts = S::lane_shifts(spec.bits);
#pragma omp parallel reduction(min                                  \
                               : bad_input, bad_rotated, bad_group) \
    reduction(max                                                   \
              : oom) if (spec.rows * cols > 65536)
    {
      float* buf = scratch_floats(cols);
      float* tmp = scratch_floats(cols);
      if (!buf || !tmp) oom = 1;
#pragma omp for schedule(static)
      for (int64_t t = 0; t < spec.rows; ++t) {
        if (!buf || !tmp) continue;
        if (!widen_row<S>(src, type, t, cols, buf)) {
          const int64_t k = t * cols + first_nonfinite(buf, cols);
          if (k < bad_input) bad_input = k;
          continue;
        }
        const float* q = rotate_row<S>(buf, tmp, cols, rot);
        int64_t bg = -1;
        const int64_t k = quantize_row_token<S>(q, t, spec, shifts, out, bg);
        if (k >= 0 && t * cols + k < bad_rotated) bad_rotated = t * cols + k;
        if (bg >= 0 && bg < bad_group) bad_group = bg;
      }
      std::free(buf);
      std::free(tmp);
    }
  } else {
    const int64_t blocks = spec.groups_per_line;
#pragma omp parallel reduction(min                                  \
                               : bad_input, bad_rotated, bad_group) \
    reduction(max                                                   \
              : oom) if (spec.rows * cols > 65536)
    {
      float* block = scratch_floats(spec.group * cols);
      float* tmp = scratch_floats(cols);
      if (!block || !tmp) oom = 1;
#pragma omp for schedule(static)
      for (int64_t rb = 0; rb < blocks; ++rb) {
        if (!block || !tmp) continue;
        const int64_t r0 = rb * spec.group;
        const int64_t gs = min_i64(spec.group, spec.rows - r0);
        bool input_ok = true;
        for (int64_t r = 0; r < gs && input_ok; ++r) {
          float* row = block + r * cols;
          if (!widen_row<S>(src, type, r0 + r, cols, row)) {
            const int64_t k = (r0 + r) * cols + first_nonfinite(row, cols);
            if (k < bad_input) bad_input = k;
            input_ok = false;
            break;
          }
          const float* q = rotate_row<S>(row, tmp, cols, rot);
          if (q != row) std::memcpy(row, q, static_cast<size_t>(cols) * sizeof(float));
        }
        if (!input_ok) continue;
        uint8_t* block_codes = out.codes + rb * cols * spec.full_bytes;
        for (int64_t c0 = 0; c0 < cols; c0 += S::W) {
          const int nl = static_cast<int>(min_i64(S::W, cols - c0));
          int64_t bg = -1;
          const int64_t k =
              quantize_channel_chunk<S>(block, gs, c0, nl, rb, spec, out, block_codes, bg);
          if (k >= 0 && r0 * cols + k < bad_rotated) bad_rotated = r0 * cols + k;
          if (bg >= 0 && bg < bad_group) bad_group = bg;
        }
      }
      std::free(block);
      std::free(tmp);
    }
  }
  Faults f;
  f.bad_input = bad_input == INT64_MAX ? -1 : bad_input;
  f.bad_rotated = bad_rotated == INT64_MAX ? -1 : bad_rotated;
  f.bad_group = bad_group == INT64_MAX ? -1 : bad_group;
  f.out_of_memory = oom != 0;
  return f;
}

}  // namespace kvq::avx
