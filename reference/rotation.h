// Outlier-aware rotation of RotateKV, docs/spec.md §2: grouped-head FWHT of pre-RoPE keys, channel
// reordering calibrated on signed channel sums, per-head FWHT of values.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace kvq {

// A KV tensor of one layer: [tokens, heads, head_dim], row-major.
struct KvShape {
  int64_t tokens = 0;
  int64_t heads = 0;
  int64_t head_dim = 0;
  int64_t channels() const { return heads * head_dim; }
};

struct RotationParams {
  int head_group = 4;          // docs/spec.md §2: g consecutive heads share one fwht(g*d)
  std::vector<int32_t> perm;   // reorder after rotation: stored[j] = rotated[perm[j]]; empty = none
};

// sum_c = signed sum over calibration tokens in token order (fp64), perm = argsort ascending,
// ties by lower index. `rotated` is [calib_tokens, channels].
std::vector<int32_t> calibrate_permutation(std::span<const float> rotated, int64_t calib_tokens,
                                           int64_t channels);

// Checks the shape rule (g divides heads, g*d a power of two) and throws kvq::Error naming the
// dimension otherwise.
void check_rotation_shape(const KvShape& shape, int head_group);

// Input validation shared by every backend (reference, avx, cuda), so rules and messages are
// one definition. Each throws kvq::Error naming `what`:
// perm must hold every index 0 .. channels-1 exactly once (names the bad entry and channel);
void check_permutation(std::span<const int32_t> perm, int64_t channels, const std::string& what);
// `size` values must fill [tokens, heads, head_dim] with heads and head_dim positive;
void check_kv_size(size_t size, const KvShape& shape, const std::string& what);
// reorder / unreorder input: rows >= 0, size == rows * perm.size(), perm a permutation;
void check_reorder_input(size_t size, int64_t rows, std::span<const int32_t> perm,
                         const std::string& what);
// rotate_v: head_dim must be a power of two in [2, 32768] (docs/spec.md §1), worded as "rotate_v".
void check_value_rotation(const KvShape& shape);
// rotate_k: the rotation shape rule, the input size, finite values and the permutation, in this
// order (every backend's rotate_k).
void check_rotate_k_input(std::span<const float> k_pre_rope, const KvShape& shape,
                          const RotationParams& params);

// stored[t, j] = x[t, perm[j]] for each row of `channels` values. perm must be a permutation.
std::vector<float> reorder(std::span<const float> x, int64_t rows, std::span<const int32_t> perm);
// Inverse of reorder: out[t, perm[j]] = y[t, j].
std::vector<float> unreorder(std::span<const float> y, int64_t rows, std::span<const int32_t> perm);

// rotate_k(k) = reorder(fwht_groups(k_pre_rope)), output [tokens, channels].
std::vector<float> rotate_k(std::span<const float> k_pre_rope, const KvShape& shape,
                            const RotationParams& params);
// inverse_rotate_k(y) = fwht_groups(unreorder(y)) (pre-RoPE basis).
std::vector<float> inverse_rotate_k(std::span<const float> y, const KvShape& shape,
                                    const RotationParams& params);
// Values: fwht(., d) per head; self-inverse, so inverse_rotate_v == rotate_v.
std::vector<float> rotate_v(std::span<const float> v, const KvShape& shape);

}  // namespace kvq
