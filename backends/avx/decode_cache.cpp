// Builds the decode-attention tables of a DecodeCache. Every rule below is a rule of reference
// reconstruct_keys / reconstruct_values / attention_decode (reference/attention.cpp); a check
// that fails raises `Invalid`, and the constructor then runs the reference, which throws the
// reference's own error for the first violation in its order.
#include "backends/avx/decode_cache.h"

#include <cmath>
#include <string>

#include "backends/avx/quant_spec.h"
#include "reference/error.h"
#include "reference/fwht.h"
#include "reference/half.h"
#include "reference/rotation.h"
#include "reference/tensor.h"

namespace kvq::avx {

namespace {

struct Invalid {};  // a rule of the reference is broken; the reference words the error

void require(bool ok) {
  if (!ok) throw Invalid{};
}

bool half_finite(uint16_t h) {
  return (h & 0x7C00u) != 0x7C00u;
}

// Adds a quantized part of `rows` rows of the cache's channels (reference check_quantized_shape
// and dequantize's checks).
int32_t add_part(const Quantized& q, int64_t rows, int64_t channels, DecodeTables::Side& s) {
  require(q.rows == rows && q.cols == channels);
  const GroupLayout l = group_layout(q.rows, q.cols, q.params);
  check_quantized(q, l, "dequantize");
  DecodePart p;
  p.codes = q.codes.data();
  p.scale = q.scale.data();
  p.zero = q.zero.empty() ? nullptr : q.zero.data();
  p.zero_int = q.zero_int.empty() ? nullptr : q.zero_int.data();
  p.spec = quant_spec(l, q.params);
  s.parts.push_back(p);
  return static_cast<int32_t>(s.parts.size() - 1);
}

// One side (K or V): exact fp32 rows, or quantized parts + outliers + kept fp16 rows.
void build_side(const DecodeCache& c, bool is_k, DecodeTables::Side& s, DecodeSide& out) {
  const int64_t tokens = c.shape.tokens, channels = c.shape.channels();
  const std::vector<float>& exact = is_k ? c.k_f32 : c.v_f32;
  if (!exact.empty()) {  // the fp32 method: these rows are the cache (no RoPE, no rotation)
    require(static_cast<int64_t>(exact.size()) == tokens * channels);
    for (float x : exact) require(std::isfinite(x));
    out.f32 = exact.data();
    return;
  }
  const Quantized& whole = is_k ? c.k : c.v;
  const auto& parts = is_k ? c.k_parts : c.v_parts;
  s.part.assign(static_cast<size_t>(tokens), -1);
  s.row.assign(static_cast<size_t>(tokens), 0);
  if (parts.empty()) {
    if (whole.rows != 0 || !whole.codes.empty()) {
      add_part(whole, tokens, channels, s);
      for (int64_t t = 0; t < tokens; ++t) {
        s.part[static_cast<size_t>(t)] = 0;
        s.row[static_cast<size_t>(t)] = t;
      }
    }
  }
  for (const DecodeCache::QuantizedRows& part : parts) {
    const int32_t index = add_part(part.q, static_cast<int64_t>(part.tokens.size()), channels, s);
    for (size_t r = 0; r < part.tokens.size(); ++r) {
      const int32_t t = part.tokens[r];
      require(t >= 0 && t < tokens && s.part[static_cast<size_t>(t)] < 0);  // once per token
      s.part[static_cast<size_t>(t)] = index;
      s.row[static_cast<size_t>(t)] = static_cast<int64_t>(r);
    }
  }
  // Outliers, bucketed per token in the cache's order (a later entry for the same element wins,
  // as in the reference's sequential overwrite).
  const DecodeCache::SparseOutliers& o = is_k ? c.k_outliers : c.v_outliers;
  require(o.index.size() == o.value.size());
  if (!o.index.empty()) {
    s.outlier_begin.assign(static_cast<size_t>(tokens + 1), 0);
    for (size_t i = 0; i < o.index.size(); ++i) {
      const int32_t at = o.index[i];
      require(at >= 0 && at < tokens * channels && half_finite(o.value[i]));
      ++s.outlier_begin[static_cast<size_t>(at / channels + 1)];
    }
    for (int64_t t = 0; t < tokens; ++t)
      s.outlier_begin[static_cast<size_t>(t + 1)] += s.outlier_begin[static_cast<size_t>(t)];
    std::vector<int64_t> next(s.outlier_begin.begin(), s.outlier_begin.end() - 1);
    s.outlier_col.resize(o.index.size());
    s.outlier_value.resize(o.index.size());
    for (size_t i = 0; i < o.index.size(); ++i) {
      const int64_t slot = next[static_cast<size_t>(o.index[i] / channels)]++;
      s.outlier_col[static_cast<size_t>(slot)] = static_cast<int32_t>(o.index[i] % channels);
      s.outlier_value[static_cast<size_t>(slot)] = o.value[i];
    }
    out.outlier_begin = s.outlier_begin.data();
    out.outlier_col = s.outlier_col.data();
    out.outlier_value = s.outlier_value.data();
  }
  // Kept rows replace whatever was quantized; every other token must have been quantized.
  const std::vector<uint8_t>& kept = is_k || c.v_kept.empty() ? c.kept : c.v_kept;
  const std::vector<uint16_t>& fp16 = is_k ? c.k_fp16 : c.v_fp16;
  require(kept.empty() || static_cast<int64_t>(kept.size()) == tokens);
  bool any = false;
  for (uint8_t k : kept) any = any || k;
  require(!any || static_cast<int64_t>(fp16.size()) == tokens * channels);
  for (int64_t t = 0; t < tokens; ++t) {
    if (kept.empty() || !kept[static_cast<size_t>(t)]) {
      require(s.part[static_cast<size_t>(t)] >= 0);
      continue;
    }
    s.part[static_cast<size_t>(t)] = -1;
    for (int64_t ch = 0; ch < channels; ++ch)
      require(half_finite(fp16[static_cast<size_t>(t * channels + ch)]));
  }
  out.parts = s.parts.data();
  out.part = s.part.data();
  out.row = s.row.data();
  out.fp16 = fp16.empty() ? nullptr : fp16.data();
}

void build(std::span<const float> q, int64_t q_heads, const DecodeCache& c, DecodeTables::Side& k,
           DecodeTables::Side& v, std::vector<double>& rope_freq, DecodeProblem& p) {
  const KvShape& shape = c.shape;
  // reference check_query and cache_channels
  require(q_heads >= 1 && q_heads % shape.heads == 0);
  require(static_cast<int64_t>(q.size()) == q_heads * shape.head_dim);
  for (float x : q) require(std::isfinite(x));
  require(shape.tokens >= 1 && shape.head_dim >= 1);
  shape_numel({shape.tokens, shape.heads, shape.head_dim}, "decode cache");
  p.tokens = shape.tokens;
  p.heads = shape.heads;
  p.head_dim = shape.head_dim;
  p.q_heads = q_heads;
  p.q = q.data();

  build_side(c, true, k, p.k);
  if (!p.k.f32) {
    switch (c.k_rotation) {
      case KeyRotation::None: break;
      case KeyRotation::GroupedHadamard: {  // reference inverse_rotate_k: unreorder, then fwht
        check_rotation_shape(shape, c.k_rotation_params.head_group);
        const std::vector<int32_t>& perm = c.k_rotation_params.perm;
        if (!perm.empty()) {
          check_permutation(perm, shape.channels(), "unreorder");
          k.unperm.resize(perm.size());
          for (size_t j = 0; j < perm.size(); ++j)
            k.unperm[static_cast<size_t>(perm[j])] = static_cast<int32_t>(j);
          p.k.unperm = k.unperm.data();
        }
        p.k.fwht_n = static_cast<int>(c.k_rotation_params.head_group * shape.head_dim);
        break;
      }
      case KeyRotation::PerHeadHadamard: p.k.fwht_n = static_cast<int>(shape.head_dim); break;
      default: require(false);
    }
    if (p.k.fwht_n > 0) p.k.fwht_scale = fwht_scale(p.k.fwht_n);  // validates n (docs/spec.md §1)
    if (c.k_pre_rope) {  // reference apply_rope's rules and its theta^(-2i/d) in fp64
      require(shape.head_dim >= 2 && shape.head_dim % 2 == 0);
      require(std::isfinite(c.rope_theta) && c.rope_theta > 0.0f);
      rope_freq.resize(static_cast<size_t>(shape.head_dim / 2));
      for (int64_t i = 0; i < shape.head_dim / 2; ++i)
        rope_freq[static_cast<size_t>(i)] =
            std::pow(static_cast<double>(c.rope_theta),
                     -2.0 * static_cast<double>(i) / static_cast<double>(shape.head_dim));
      p.k.rope_freq = rope_freq.data();
    }
  }
  build_side(c, false, v, p.v);
  if (!p.v.f32 && c.v_per_head_hadamard) {
    p.v.fwht_n = static_cast<int>(shape.head_dim);
    p.v.fwht_scale = fwht_scale(p.v.fwht_n);
  }
}

}  // namespace

DecodeTables::DecodeTables(std::span<const float> q, int64_t q_heads, const DecodeCache& cache) {
  // The reference divides by the KV head count before it checks it (check_query), so a cache
  // without heads is rejected here, in the words of its own shape check.
  const KvShape& s = cache.shape;
  if (s.heads < 1)
    throw Error("decode cache: shape [tokens " + std::to_string(s.tokens) + ", heads " +
                std::to_string(s.heads) + ", head_dim " + std::to_string(s.head_dim) +
                "] needs tokens >= 0 and positive heads and head_dim");
  try {
    build(q, q_heads, cache, k_, v_, rope_freq_, problem_);
    return;
  } catch (const Invalid&) {
  } catch (const Error&) {
  }
  (void)kvq::attention_decode(q, q_heads, cache);  // throws the reference's error
  throw Error("attention_decode: the AVX backend rejected a cache the reference accepts");
}

}  // namespace kvq::avx
