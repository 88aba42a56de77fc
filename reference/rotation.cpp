// Outlier-aware rotation of RotateKV, written as docs/spec.md §2 states it: grouped-head FWHT of
// pre-RoPE keys, then a calibrated channel permutation; per-head FWHT of values.
#include "reference/rotation.h"

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <string>

#include "reference/error.h"
#include "reference/fwht.h"
#include "reference/tensor.h"

namespace kvq {

namespace {

constexpr int64_t kMaxFwhtSize = 32768;  // docs/spec.md §1

bool is_fwht_size(int64_t n) {
  return n >= 2 && n <= kMaxFwhtSize && (n & (n - 1)) == 0;
}

// x [rows, perm.size()] -> out[t, j] = x[t, perm[j]] (forward) or out[t, perm[j]] = x[t, j].
std::vector<float> permute_rows(std::span<const float> x, int64_t rows,
                                std::span<const int32_t> perm, bool forward,
                                const std::string& what) {
  check_reorder_input(x.size(), rows, perm, what);
  const auto channels = static_cast<int64_t>(perm.size());
  const int64_t n = rows * channels;
  std::vector<float> out(x.size());
  const float* src = x.data();
  float* dst = out.data();
  const int32_t* p = perm.data();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t t = 0; t < rows; ++t) {
    const float* in_row = src + t * channels;
    float* out_row = dst + t * channels;
    if (forward)
      for (int64_t j = 0; j < channels; ++j) out_row[j] = in_row[p[j]];
    else
      for (int64_t j = 0; j < channels; ++j) out_row[p[j]] = in_row[j];
  }
  return out;
}

// Grouped-head FWHT: the g consecutive heads of one token are g*d contiguous values (row-major
// [T, H, d]), so one fwht(., g*d) over the whole tensor transforms every group (docs/spec.md §2).
void fwht_groups(std::span<float> x, const KvShape& shape, int head_group) {
  check_rotation_shape(shape, head_group);
  fwht(x, static_cast<int>(static_cast<int64_t>(head_group) * shape.head_dim));
}

}  // namespace

// perm must hold every index 0 .. channels-1 exactly once.
void check_permutation(std::span<const int32_t> perm, int64_t channels, const std::string& what) {
  if (static_cast<int64_t>(perm.size()) != channels)
    throw Error(what + ": permutation has " + std::to_string(perm.size()) +
                " entries, expected one per channel (" + std::to_string(channels) + ")");
  std::vector<uint8_t> seen(perm.size(), 0);
  for (size_t j = 0; j < perm.size(); ++j) {
    const int32_t p = perm[j];
    if (p < 0 || static_cast<int64_t>(p) >= channels)
      throw Error(what + ": permutation entry " + std::to_string(j) + " = " + std::to_string(p) +
                  " is outside [0, " + std::to_string(channels) + ")");
    if (seen[static_cast<size_t>(p)])
      throw Error(what + ": permutation entry " + std::to_string(j) + " repeats channel " +
                  std::to_string(p));
    seen[static_cast<size_t>(p)] = 1;
  }
}

// A KV tensor has at least one channel; shape_numel rejects negative tokens and overflow.
void check_kv_size(size_t size, const KvShape& shape, const std::string& what) {
  if (shape.heads < 1 || shape.head_dim < 1)
    throw Error(what + ": heads (" + std::to_string(shape.heads) + ") and head_dim (" +
                std::to_string(shape.head_dim) + ") must be positive");
  const int64_t n = shape_numel({shape.tokens, shape.heads, shape.head_dim}, what);
  if (static_cast<int64_t>(size) != n)
    throw Error(what + ": input has " + std::to_string(size) + " values, shape [tokens " +
                std::to_string(shape.tokens) + ", heads " + std::to_string(shape.heads) +
                ", head_dim " + std::to_string(shape.head_dim) + "] needs " + std::to_string(n));
}

void check_reorder_input(size_t size, int64_t rows, std::span<const int32_t> perm,
                         const std::string& what) {
  const auto channels = static_cast<int64_t>(perm.size());
  if (rows < 0) throw Error(what + ": negative row count " + std::to_string(rows));
  const int64_t n = shape_numel({rows, channels}, what);
  if (static_cast<int64_t>(size) != n)
    throw Error(what + ": input has " + std::to_string(size) + " values, " + std::to_string(rows) +
                " rows of " + std::to_string(channels) + " channels need " + std::to_string(n));
  check_permutation(perm, channels, what);
}

void check_value_rotation(const KvShape& shape) {
  if (!is_fwht_size(shape.head_dim))
    throw Error("rotate_v: head_dim d = " + std::to_string(shape.head_dim) +
                " is not a power of two in [2, 32768]");
}

void check_rotate_k_input(std::span<const float> k_pre_rope, const KvShape& shape,
                          const RotationParams& params) {
  check_rotation_shape(shape, params.head_group);
  check_kv_size(k_pre_rope.size(), shape, "rotate_k");
  require_finite(k_pre_rope, "rotate_k input");
  if (!params.perm.empty()) check_permutation(params.perm, shape.channels(), "rotate_k");
}

void check_rotation_shape(const KvShape& shape, int head_group) {
  if (shape.tokens < 0)
    throw Error("rotation: tokens = " + std::to_string(shape.tokens) + " is negative");
  if (shape.heads < 1 || shape.head_dim < 1)
    throw Error("rotation: heads (" + std::to_string(shape.heads) + ") and head_dim (" +
                std::to_string(shape.head_dim) + ") must be positive");
  if (head_group < 1)
    throw Error("rotation: head_group g = " + std::to_string(head_group) + " must be at least 1");
  if (shape.heads % head_group != 0)
    throw Error("rotation: head_group g = " + std::to_string(head_group) +
                " does not divide heads H_kv = " + std::to_string(shape.heads));
  const int64_t n = static_cast<int64_t>(head_group) * shape.head_dim;
  if (!is_fwht_size(n))
    throw Error("rotation: head_group * head_dim = " + std::to_string(head_group) + " * " +
                std::to_string(shape.head_dim) + " = " + std::to_string(n) +
                " is not a power of two in [2, 32768]");
}

std::vector<int32_t> calibrate_permutation(std::span<const float> rotated, int64_t calib_tokens,
                                           int64_t channels) {
  const std::string what = "calibrate_permutation";
  if (calib_tokens < 0 || channels < 0)
    throw Error(what + ": negative shape [" + std::to_string(calib_tokens) + ", " +
                std::to_string(channels) + "]");
  if (channels > INT32_MAX)
    throw Error(what + ": " + std::to_string(channels) + " channels do not fit int32 indices");
  const int64_t n = shape_numel({calib_tokens, channels}, what);
  if (static_cast<int64_t>(rotated.size()) != n)
    throw Error(what + ": input has " + std::to_string(rotated.size()) + " values, [" +
                std::to_string(calib_tokens) + " tokens, " + std::to_string(channels) +
                " channels] needs " + std::to_string(n));
  require_finite(rotated, what + " input");
  // sum_c = signed sum over calibration tokens, in token order, fp64 accumulation (docs/spec.md
  // §2).
  std::vector<double> sum(static_cast<size_t>(channels), 0.0);
  for (int64_t t = 0; t < calib_tokens; ++t) {
    const float* row = rotated.data() + t * channels;
    for (int64_t c = 0; c < channels; ++c) sum[c] += static_cast<double>(row[c]);
  }
  // Ascending by sum_c, ties by lower channel index: a stable sort of the identity.
  std::vector<int32_t> perm(static_cast<size_t>(channels));
  std::iota(perm.begin(), perm.end(), 0);
  std::stable_sort(perm.begin(), perm.end(),
                   [&sum](int32_t a, int32_t b) { return sum[a] < sum[b]; });
  return perm;
}

std::vector<float> reorder(std::span<const float> x, int64_t rows, std::span<const int32_t> perm) {
  return permute_rows(x, rows, perm, true, "reorder");
}

std::vector<float> unreorder(std::span<const float> y, int64_t rows,
                             std::span<const int32_t> perm) {
  return permute_rows(y, rows, perm, false, "unreorder");
}

std::vector<float> rotate_k(std::span<const float> k_pre_rope, const KvShape& shape,
                            const RotationParams& params) {
  check_rotate_k_input(k_pre_rope, shape, params);
  std::vector<float> rotated(k_pre_rope.begin(), k_pre_rope.end());
  fwht_groups(rotated, shape, params.head_group);
  if (!params.perm.empty()) rotated = reorder(rotated, shape.tokens, params.perm);
  require_no_overflow(rotated, "rotate_k (FWHT)");  // the index of the output, as the backends
  return rotated;
}

std::vector<float> inverse_rotate_k(std::span<const float> y, const KvShape& shape,
                                    const RotationParams& params) {
  check_rotation_shape(shape, params.head_group);
  check_kv_size(y.size(), shape, "inverse_rotate_k");
  require_finite(y, "inverse_rotate_k input");
  std::vector<float> x = params.perm.empty() ? std::vector<float>(y.begin(), y.end())
                                             : unreorder(y, shape.tokens, params.perm);
  fwht_groups(x, shape, params.head_group);  // the normalized FWHT is its own inverse (§1)
  require_no_overflow(x, "inverse_rotate_k (FWHT)");
  return x;
}

std::vector<float> rotate_v(std::span<const float> v, const KvShape& shape) {
  check_kv_size(v.size(), shape, "rotate_v");
  check_value_rotation(shape);
  require_finite(v, "rotate_v input");
  std::vector<float> out(v.begin(), v.end());
  fwht(out, static_cast<int>(shape.head_dim));
  require_no_overflow(out, "rotate_v (FWHT)");
  return out;
}

}  // namespace kvq
