// Decode attention over a quantized KV cache, docs/spec.md §7, and its fp64 oracle. The cache is
// reconstructed first (dequantize, sparse outliers, inverse rotation, fp16 kept rows, RoPE),
// then one query attends to all cached tokens.
//
// fp32 order of attention_decode, per query head h (KV head g = h / (q_heads / kv_heads)):
//   s_j = (sum_{c = 0 .. d-1} q[c] * k_j[c], accumulated from 0.0f in channel order) / sqrt(d)
//   m = max_j s_j;  e_j = exp(s_j - m);  Z = sum_j e_j in token order from 0.0f
//   p_j = e_j / Z;  o[c] = sum_j p_j * v_j[c] in token order from 0.0f
// Each product, sum, exp and division is a separate rounding (no FMA, docs/spec.md §0).
#include "reference/attention.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "reference/error.h"
#include "reference/fwht.h"
#include "reference/half.h"
#include "reference/tensor.h"

namespace kvq {

namespace {

int64_t cache_channels(const DecodeCache& cache) {
  const KvShape& s = cache.shape;
  if (s.tokens < 0 || s.heads < 1 || s.head_dim < 1)
    throw Error("decode cache: shape [tokens " + std::to_string(s.tokens) + ", heads " +
                std::to_string(s.heads) + ", head_dim " + std::to_string(s.head_dim) +
                "] needs tokens >= 0 and positive heads and head_dim");
  shape_numel({s.tokens, s.heads, s.head_dim}, "decode cache");
  return s.channels();
}

void check_quantized_shape(const Quantized& q, int64_t rows, int64_t cols,
                           const std::string& what) {
  if (q.rows != rows || q.cols != cols)
    throw Error(what + ": quantized part is [" + std::to_string(q.rows) + ", " +
                std::to_string(q.cols) + "], expected [" + std::to_string(rows) + ", " +
                std::to_string(cols) + "]");
}

// Dequantized rows scattered to their tokens in the stored basis, outliers applied; `covered`
// marks the tokens that some quantized row holds.
std::vector<float> dequantized_stored(const Quantized& whole,
                                      const std::vector<DecodeCache::QuantizedRows>& parts,
                                      const DecodeCache::SparseOutliers& outliers, int64_t tokens,
                                      int64_t channels, std::vector<uint8_t>& covered,
                                      const std::string& what) {
  std::vector<float> y(static_cast<size_t>(tokens * channels), 0.0f);
  covered.assign(static_cast<size_t>(tokens), 0);
  if (parts.empty()) {
    if (whole.rows != 0 || !whole.codes.empty()) {
      check_quantized_shape(whole, tokens, channels, what);
      y = dequantize(whole);
      covered.assign(static_cast<size_t>(tokens), 1);
    }
  }
  for (size_t p = 0; p < parts.size(); ++p) {
    const auto& part = parts[p];
    const std::string part_name = what + " part " + std::to_string(p);
    check_quantized_shape(part.q, static_cast<int64_t>(part.tokens.size()), channels, part_name);
    const std::vector<float> rows = dequantize(part.q);
    for (size_t r = 0; r < part.tokens.size(); ++r) {
      const int32_t t = part.tokens[r];
      if (t < 0 || t >= tokens)
        throw Error(part_name + ": row " + std::to_string(r) + " names token " + std::to_string(t) +
                    ", outside [0, " + std::to_string(tokens) + ")");
      if (covered[static_cast<size_t>(t)])
        throw Error(part_name + ": token " + std::to_string(t) + " is quantized twice");
      covered[static_cast<size_t>(t)] = 1;
      std::copy(rows.begin() + static_cast<int64_t>(r) * channels,
                rows.begin() + static_cast<int64_t>(r + 1) * channels, y.begin() + t * channels);
    }
  }
  if (outliers.index.size() != outliers.value.size())
    throw Error(what + " outliers: " + std::to_string(outliers.index.size()) + " indices but " +
                std::to_string(outliers.value.size()) + " values");
  for (size_t i = 0; i < outliers.index.size(); ++i) {
    const int32_t at = outliers.index[i];
    const float v = half_to_float(outliers.value[i]);
    if (at < 0 || at >= tokens * channels || !std::isfinite(v))
      throw Error(what + " outliers: entry " + std::to_string(i) + " (index " + std::to_string(at) +
                  ") is out of range or not finite");
    y[static_cast<size_t>(at)] = v;
  }
  return y;
}

// Overwrites kept rows with their fp16 values and checks every other token was quantized.
void apply_kept(std::vector<float>& x, const std::vector<uint8_t>& kept,
                const std::vector<uint16_t>& fp16, const std::vector<uint8_t>& covered,
                int64_t tokens, int64_t channels, const std::string& what) {
  if (!kept.empty() && static_cast<int64_t>(kept.size()) != tokens)
    throw Error(what + ": kept has " + std::to_string(kept.size()) + " flags for " +
                std::to_string(tokens) + " tokens");
  bool any = false;
  for (uint8_t k : kept) any = any || k;
  if (any && static_cast<int64_t>(fp16.size()) != tokens * channels)
    throw Error(what + ": fp16 rows hold " + std::to_string(fp16.size()) + " values, [" +
                std::to_string(tokens) + ", " + std::to_string(channels) + "] needed");
  for (int64_t t = 0; t < tokens; ++t) {
    const bool is_kept = !kept.empty() && kept[static_cast<size_t>(t)];
    if (!is_kept) {
      if (!covered[static_cast<size_t>(t)])
        throw Error(what + ": token " + std::to_string(t) + " is neither kept nor quantized");
      continue;
    }
    for (int64_t c = 0; c < channels; ++c) {
      const float v = half_to_float(fp16[static_cast<size_t>(t * channels + c)]);
      if (!std::isfinite(v))
        throw Error(what + ": fp16 row of token " + std::to_string(t) + " is not finite");
      x[static_cast<size_t>(t * channels + c)] = v;
    }
  }
}

std::vector<float> exact_rows(const std::vector<float>& rows, int64_t tokens, int64_t channels,
                              const std::string& what) {
  if (static_cast<int64_t>(rows.size()) != tokens * channels)
    throw Error(what + ": fp32 rows hold " + std::to_string(rows.size()) + " values, [" +
                std::to_string(tokens) + ", " + std::to_string(channels) + "] needed");
  require_finite(rows, what + " fp32 rows");
  return rows;
}

void fwht_per_head(std::vector<float>& x, const KvShape& shape) {
  if (!x.empty()) fwht(x, static_cast<int>(shape.head_dim));
}

void check_query(std::span<const float> q, int64_t q_heads, const DecodeCache& cache) {
  const int64_t kv_heads = cache.shape.heads;
  if (kv_heads < 1 || cache.shape.head_dim < 1)
    throw Error("attention_decode: the cache shape needs heads >= 1 and head_dim >= 1 (got " +
                std::to_string(kv_heads) + ", " + std::to_string(cache.shape.head_dim) + ")");
  if (q_heads < 1 || q_heads % kv_heads != 0)
    throw Error("attention_decode: q_heads (" + std::to_string(q_heads) +
                ") must be a positive multiple of the KV heads (" + std::to_string(kv_heads) + ")");
  if (static_cast<int64_t>(q.size()) != q_heads * cache.shape.head_dim)
    throw Error("attention_decode: q has " + std::to_string(q.size()) + " values, [" +
                std::to_string(q_heads) + ", " + std::to_string(cache.shape.head_dim) + "] needed");
  require_finite(q, "attention_decode q");
  if (cache.shape.tokens < 1) throw Error("attention_decode: the cache holds no tokens");
}

}  // namespace

void apply_rope(std::span<float> x, int64_t heads, int64_t head_dim, int64_t position,
                float theta) {
  if (heads < 1 || head_dim < 2 || head_dim % 2 != 0)
    throw Error("apply_rope: heads (" + std::to_string(heads) +
                ") must be positive and head_dim (" + std::to_string(head_dim) + ") even and >= 2");
  if (static_cast<int64_t>(x.size()) != heads * head_dim)
    throw Error("apply_rope: x has " + std::to_string(x.size()) + " values, [" +
                std::to_string(heads) + ", " + std::to_string(head_dim) + "] needed");
  if (position < 0) throw Error("apply_rope: negative position " + std::to_string(position));
  require_finite(x, "apply_rope input");
  if (!std::isfinite(theta) || theta <= 0.0f)
    throw Error("apply_rope: theta must be finite and positive");
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    const double angle = static_cast<double>(position) *
                         std::pow(static_cast<double>(theta),
                                  -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
    const auto c = static_cast<float>(std::cos(angle));
    const auto s = static_cast<float>(std::sin(angle));
    for (int64_t h = 0; h < heads; ++h) {
      float* pair = x.data() + h * head_dim + 2 * i;
      const float a = pair[0], b = pair[1];
      const float ac = a * c, bs = b * s, as = a * s, bc = b * c;
      pair[0] = ac - bs;
      pair[1] = as + bc;
    }
  }
}

std::vector<float> reconstruct_keys(const DecodeCache& cache) {
  const int64_t channels = cache_channels(cache);
  const int64_t tokens = cache.shape.tokens;
  if (!cache.k_f32.empty()) return exact_rows(cache.k_f32, tokens, channels, "decode cache K");
  std::vector<uint8_t> covered;
  std::vector<float> k = dequantized_stored(cache.k, cache.k_parts, cache.k_outliers, tokens,
                                            channels, covered, "decode cache K");
  switch (cache.k_rotation) {
    case KeyRotation::None: break;
    case KeyRotation::GroupedHadamard:
      k = inverse_rotate_k(k, cache.shape, cache.k_rotation_params);
      break;
    case KeyRotation::PerHeadHadamard: fwht_per_head(k, cache.shape); break;
  }
  apply_kept(k, cache.kept, cache.k_fp16, covered, tokens, channels, "decode cache K");
  if (cache.k_pre_rope)
    for (int64_t t = 0; t < tokens; ++t)
      apply_rope(std::span<float>(k).subspan(static_cast<size_t>(t * channels),
                                             static_cast<size_t>(channels)),
                 cache.shape.heads, cache.shape.head_dim, t, cache.rope_theta);
  return k;
}

std::vector<float> reconstruct_values(const DecodeCache& cache) {
  const int64_t channels = cache_channels(cache);
  const int64_t tokens = cache.shape.tokens;
  if (!cache.v_f32.empty()) return exact_rows(cache.v_f32, tokens, channels, "decode cache V");
  std::vector<uint8_t> covered;
  std::vector<float> v = dequantized_stored(cache.v, cache.v_parts, cache.v_outliers, tokens,
                                            channels, covered, "decode cache V");
  if (cache.v_per_head_hadamard) fwht_per_head(v, cache.shape);
  apply_kept(v, cache.v_kept.empty() ? cache.kept : cache.v_kept, cache.v_fp16, covered, tokens,
             channels, "decode cache V");
  return v;
}

std::vector<float> attention_decode(std::span<const float> q, int64_t q_heads,
                                    const DecodeCache& cache) {
  check_query(q, q_heads, cache);
  const std::vector<float> k = reconstruct_keys(cache);
  const std::vector<float> v = reconstruct_values(cache);
  const int64_t tokens = cache.shape.tokens, d = cache.shape.head_dim;
  const int64_t channels = cache.shape.channels(), per_kv = q_heads / cache.shape.heads;
  const float root_d = std::sqrt(static_cast<float>(d));
  std::vector<float> out(static_cast<size_t>(q_heads * d), 0.0f);
  std::vector<float> s(static_cast<size_t>(tokens));
  for (int64_t h = 0; h < q_heads; ++h) {
    const float* qh = q.data() + h * d;
    const int64_t g = h / per_kv;
    float m = -INFINITY;
    for (int64_t j = 0; j < tokens; ++j) {
      const float* kj = k.data() + j * channels + g * d;
      float dot = 0.0f;
      for (int64_t c = 0; c < d; ++c) dot += qh[c] * kj[c];
      s[static_cast<size_t>(j)] = dot / root_d;
      m = std::max(m, s[static_cast<size_t>(j)]);
    }
    float z = 0.0f;
    for (int64_t j = 0; j < tokens; ++j) {
      s[static_cast<size_t>(j)] = std::exp(s[static_cast<size_t>(j)] - m);
      z += s[static_cast<size_t>(j)];
    }
    float* oh = out.data() + h * d;
    for (int64_t j = 0; j < tokens; ++j) {
      const float p = s[static_cast<size_t>(j)] / z;
      const float* vj = v.data() + j * channels + g * d;
      for (int64_t c = 0; c < d; ++c) oh[c] += p * vj[c];
    }
  }
  return out;
}

std::vector<double> attention_decode_oracle(std::span<const float> q, int64_t q_heads,
                                            const DecodeCache& cache) {
  check_query(q, q_heads, cache);
  const std::vector<float> k = reconstruct_keys(cache);
  const std::vector<float> v = reconstruct_values(cache);
  const int64_t tokens = cache.shape.tokens, d = cache.shape.head_dim;
  const int64_t channels = cache.shape.channels(), per_kv = q_heads / cache.shape.heads;
  const double root_d = std::sqrt(static_cast<double>(d));
  std::vector<double> out(static_cast<size_t>(q_heads * d), 0.0);
  std::vector<double> s(static_cast<size_t>(tokens));
  for (int64_t h = 0; h < q_heads; ++h) {
    const int64_t g = h / per_kv;
    double m = -INFINITY;
    for (int64_t j = 0; j < tokens; ++j) {
      double dot = 0.0;
      for (int64_t c = 0; c < d; ++c)
        dot += static_cast<double>(q[static_cast<size_t>(h * d + c)]) *
               static_cast<double>(k[static_cast<size_t>(j * channels + g * d + c)]);
      s[static_cast<size_t>(j)] = dot / root_d;
      m = std::max(m, s[static_cast<size_t>(j)]);
    }
    double z = 0.0;
    for (int64_t j = 0; j < tokens; ++j) {
      s[static_cast<size_t>(j)] = std::exp(s[static_cast<size_t>(j)] - m);
      z += s[static_cast<size_t>(j)];
    }
    for (int64_t j = 0; j < tokens; ++j)
      for (int64_t c = 0; c < d; ++c)
        out[static_cast<size_t>(h * d + c)] +=
            s[static_cast<size_t>(j)] / z *
            static_cast<double>(v[static_cast<size_t>(j * channels + g * d + c)]);
  }
  return out;
}

std::vector<double> causal_attention_f64(std::span<const float> q, std::span<const float> k,
                                         int64_t tokens, int64_t q_heads, int64_t kv_heads,
                                         int64_t head_dim, int64_t head) {
  if (tokens < 1 || head_dim < 1 || kv_heads < 1 || q_heads < 1 || q_heads % kv_heads != 0)
    throw Error("causal attention: tokens, head_dim and heads must be positive and q_heads (" +
                std::to_string(q_heads) + ") a multiple of kv_heads (" + std::to_string(kv_heads) +
                ")");
  if (head < 0 || head >= q_heads)
    throw Error("causal attention: head " + std::to_string(head) + " outside [0, " +
                std::to_string(q_heads) + ")");
  const int64_t qn = shape_numel({tokens, q_heads, head_dim}, "causal attention q");
  const int64_t kn = shape_numel({tokens, kv_heads, head_dim}, "causal attention k");
  if (static_cast<int64_t>(q.size()) != qn || static_cast<int64_t>(k.size()) != kn)
    throw Error("causal attention: q has " + std::to_string(q.size()) + " values (needs " +
                std::to_string(qn) + "), k has " + std::to_string(k.size()) + " (needs " +
                std::to_string(kn) + ")");
  require_finite(q, "causal attention q");
  require_finite(k, "causal attention k");
  const int64_t g = head / (q_heads / kv_heads);
  const double root_d = std::sqrt(static_cast<double>(head_dim));
  const int64_t n = shape_numel({tokens, tokens}, "causal attention matrix");
  std::vector<double> a(static_cast<size_t>(n), 0.0);
  for (int64_t i = 0; i < tokens; ++i) {
    const float* qi = q.data() + (i * q_heads + head) * head_dim;
    double* row = a.data() + i * tokens;
    double m = -INFINITY;
    for (int64_t j = 0; j <= i; ++j) {
      const float* kj = k.data() + (j * kv_heads + g) * head_dim;
      double dot = 0.0;
      for (int64_t c = 0; c < head_dim; ++c)
        dot += static_cast<double>(qi[c]) * static_cast<double>(kj[c]);
      row[j] = dot / root_d;
      m = std::max(m, row[j]);
    }
    double z = 0.0;
    for (int64_t j = 0; j <= i; ++j) {
      row[j] = std::exp(row[j] - m);
      z += row[j];
    }
    for (int64_t j = 0; j <= i; ++j) row[j] /= z;
  }
  return a;
}

}  // namespace kvq
