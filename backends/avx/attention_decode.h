// SIMD decode attention over a quantized cache (docs/spec.md §7, a tolerance op gated against the
// fp64 oracle, so the reductions may be reordered), templated on the ISA traits S.
//
// Flash-decoding over fixed chunks of kChunk tokens: per chunk, one thread rebuilds the chunk's
// K and V rows in the original basis into an L2-resident buffer (dequantize, sparse outliers,
// inverse rotation, fp16 kept rows, RoPE: the reference's reconstruction order), then for every
// query head computes the chunk's partial softmax (max m, sum l = sum_j e^(s_j - m), unnormalized
// o = sum_j e^(s_j - m) v_j). A second pass merges the chunks of each query head in chunk order.
// Why chunks of tokens and not heads: the grouped K rotation and its reorder mix all heads of a
// token, so a row is rebuilt whole, once. Every partial is computed by one thread and the merge
// order is fixed, so the output does not depend on the thread count.
// Bytes read per token: the stored row (b/8 per element + 4/G for scale and zero, or 2 for fp16
// rows) of K and V; the fp32 rebuild stays in cache.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "backends/avx/fwht.h"
#include "backends/avx/kernels.h"
#include "backends/avx/quantize.h"
#include "backends/avx/rotate_quantize.h"

namespace kvq::avx {

// e^x for x <= 0 (Cephes expf: x = n ln2 + r, |r| <= ln2 / 2, degree-6 polynomial, 2^n by the
// exponent bits); about 2 ulp. x below -87 is clamped there: e^-87 ~ 1.6e-38 against the chunk
// maximum's e^0 = 1 is below fp32 resolution.
template <class S>
inline typename S::V exp_nonpositive(typename S::V x) {
  using V = typename S::V;
  x = S::max(x, S::set1(-87.0f));
  const V n = S::round_ne(S::mul(x, S::set1(1.44269504088896341f)));
  V r = S::fmadd(n, S::set1(-0.693359375f), x);
  r = S::fmadd(n, S::set1(2.12194440e-4f), r);
  V p = S::set1(1.9875691500e-4f);
  p = S::fmadd(p, r, S::set1(1.3981999507e-3f));
  p = S::fmadd(p, r, S::set1(8.3334519073e-3f));
  p = S::fmadd(p, r, S::set1(4.1665795894e-2f));
  p = S::fmadd(p, r, S::set1(1.6666665459e-1f));
  p = S::fmadd(p, r, S::set1(5.0000001201e-1f));
  const V y = S::add(S::fmadd(S::mul(p, r), r, r), S::set1(1.0f));
  const V scale = S::as_float(S::shl(S::addi(S::to_int(n), S::seti(127)), 23));
  return S::mul(y, scale);
}

// RoPE of one row ([heads, d]) at `position` (reference apply_rope: angle in fp64 from the same
// theta^(-2i/d), cos/sin rounded to fp32, then (a, b) -> (a c - b s, a s + b c) in fp32).
static inline void rope_row(float* x, int64_t heads, int64_t d, int64_t position,
                            const double* freq) {
  for (int64_t i = 0; i < d / 2; ++i) {
    const double angle = static_cast<double>(position) * freq[i];
    const auto c = static_cast<float>(std::cos(angle));
    const auto s = static_cast<float>(std::sin(angle));
    for (int64_t h = 0; h < heads; ++h) {
      float* pair = x + h * d + 2 * i;
      const float a = pair[0], b = pair[1];
      pair[0] = a * c - b * s;
      pair[1] = a * s + b * c;
    }
  }
}

// Token t's row in the stored (quantized) basis with its outliers, or its fp16 kept row (original
// basis; *kept set).
template <class S>
inline float* stored_row(const DecodeSide& side, int64_t cols, int64_t t, float* buf, bool* kept) {
  const int32_t part = side.part[t];
  *kept = part < 0;
  if (part < 0) {
    const uint16_t* h = side.fp16 + t * cols;
    for (int64_t k = 0; k < cols; k += S::W) {
      const int m = cols - k < S::W ? static_cast<int>(cols - k) : S::W;
      S::store_n(buf + k, S::load_f16_n(h + k, m), m);
    }
    return buf;
  }
  const DecodePart& q = side.parts[part];
  if (q.spec.channel_axis)
    dequantize_channel_row<S>(q.codes, q.scale, q.zero, q.zero_int, q.spec, side.row[t], buf);
  else
    dequantize_token_row<S>(q.codes, q.scale, q.zero, q.zero_int, q.spec,
                            S::lane_shifts(q.spec.bits), side.row[t], buf);
  if (side.outlier_begin)
    for (int64_t o = side.outlier_begin[t]; o < side.outlier_begin[t + 1]; ++o)
      buf[side.outlier_col[o]] = S::from_half(side.outlier_value[o]);
  return buf;
}

// Token t's row of one side in the original basis (post-RoPE for K). Writes into buf (tmp is
// scratch of the same size) unless the cache holds exact fp32 rows, which are returned in place.
template <class S>
inline const float* decode_row(const DecodeSide& side, const DecodeProblem& p, int64_t t,
                               float* buf, float* tmp) {
  const int64_t cols = p.heads * p.head_dim;
  if (side.f32) return side.f32 + t * cols;
  bool kept = false;
  // With a reorder the stored row goes to tmp and is unreordered into buf.
  float* x = stored_row<S>(side, cols, t, side.part[t] >= 0 && side.unperm ? tmp : buf, &kept);
  if (!kept) {
    if (side.unperm) {
      gather_row<S>(tmp, cols, side.unperm, buf);
      x = buf;
    }
    if (side.fwht_n > 0) fwht_row<S>(x, cols, side.fwht_n, side.fwht_scale);
  }
  if (side.rope_freq) rope_row(x, p.heads, p.head_dim, t, side.rope_freq);
  return x;
}

// a . b over n values.
template <class S>
inline float dot(const float* a, const float* b, int64_t n) {
  using V = typename S::V;
  V acc0 = S::zero(), acc1 = S::zero();
  int64_t c = 0;
  for (; c + 2 * S::W <= n; c += 2 * S::W) {
    acc0 = S::fmadd(S::load(a + c), S::load(b + c), acc0);
    acc1 = S::fmadd(S::load(a + c + S::W), S::load(b + c + S::W), acc1);
  }
  for (; c < n; c += S::W) {
    const int m = n - c < S::W ? static_cast<int>(n - c) : S::W;
    acc0 = S::fmadd(S::load_n(a + c, m, S::zero()), S::load_n(b + c, m, S::zero()), acc0);
  }
  return S::reduce_add(S::add(acc0, acc1));
}

// Partial softmax of one query head over one chunk: m, l and o[d] (unnormalized).
template <class S>
inline void chunk_partial(const float* qh, const float* const* krows, const float* const* vrows,
                          int64_t n, int64_t offset, int64_t d, float* e, float* m_out,
                          float* l_out, float* o) {
  using V = typename S::V;
  float m = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    e[j] = dot<S>(qh, krows[j] + offset, d);
    m = e[j] > m ? e[j] : m;
  }
  const V vm = S::set1(m);
  V vl = S::zero();
  for (int64_t j = 0; j < n; j += S::W) {
    const int w = n - j < S::W ? static_cast<int>(n - j) : S::W;
    const V x = exp_nonpositive<S>(S::sub(S::load_n(e + j, w, vm), vm));
    S::store_n(e + j, x, w);
    vl = S::add(vl, S::load_n(e + j, w, S::zero()));
  }
  *m_out = m;
  *l_out = S::reduce_add(vl);
  for (int64_t c = 0; c < d; c += S::W) {
    const int w = d - c < S::W ? static_cast<int>(d - c) : S::W;
    V acc = S::zero();
    for (int64_t j = 0; j < n; ++j)
      acc = S::fmadd(S::set1(e[j]), S::load_n(vrows[j] + offset + c, w, S::zero()), acc);
    S::store_n(o + c, acc, w);
  }
}

// Merges the partials [block][query head] (m, l, then `sums` unnormalized sums of d values;
// `stride` floats each) in block order: M = max m_c, L = sum_c l_c e^(m_c - M),
// o_v = sum_c e^(m_c - M) o_{c,v}. Writes o [qh][sums][d] (unnormalized) and L [qh].
template <class S>
inline void merge_partials(const float* partial, int64_t blocks, int64_t qh, int64_t d,
                           int64_t stride, int sums, float* out, float* lsum) {
  const int64_t n = sums * d;
#pragma omp parallel for schedule(static) if (blocks * qh * n > 65536)
  for (int64_t h = 0; h < qh; ++h) {
    float mx = -INFINITY;
    for (int64_t c = 0; c < blocks; ++c) {
      const float m = partial[(c * qh + h) * stride];
      mx = m > mx ? m : mx;
    }
    float l = 0.0f;
    float* oh = out + h * n;
    for (int64_t k = 0; k < n; ++k) oh[k] = 0.0f;
    for (int64_t c = 0; c < blocks; ++c) {
      const float* part = partial + (c * qh + h) * stride;
      const float w = std::exp(part[0] - mx);
      l += w * part[1];
      const typename S::V vw = S::set1(w);
      for (int64_t k = 0; k < n; k += S::W) {
        const int m = n - k < S::W ? static_cast<int>(n - k) : S::W;
        S::store_n(
            oh + k,
            S::fmadd(vw, S::load_n(part + 2 + k, m, S::zero()), S::load_n(oh + k, m, S::zero())),
            m);
      }
    }
    lsum[h] = l;
  }
}

template <class S>
bool attention_rebuild_kernel(const DecodeProblem& p, float* out) {
  const int64_t d = p.head_dim, cols = p.heads * d, qh = p.q_heads;
  const int64_t per_kv = qh / p.heads;
  const int64_t chunks = (p.tokens + kDecodeChunk - 1) / kDecodeChunk;
  // Partials [chunk][query head]: m, l, o[d]; q pre-divided by sqrt(d) (reference: dot / sqrt d).
  const int64_t stride = d + 2;
  float* partial = scratch_floats(chunks * qh * stride);
  float* q = scratch_floats(qh * d);
  if (!partial || !q) {
    std::free(partial);
    std::free(q);
    return false;
  }
  const float root_d = std::sqrt(static_cast<float>(d));
  for (int64_t i = 0; i < qh * d; ++i) q[i] = p.q[i] / root_d;
  int oom = 0;
#pragma omp parallel reduction(max : oom) if (chunks > 1)
  {
    float* kbuf = scratch_floats(kDecodeChunk * cols);
    float* vbuf = scratch_floats(kDecodeChunk * cols);
    float* tmp = scratch_floats(cols);
    float* e = scratch_floats(kDecodeChunk);
    const float* krows[kDecodeChunk];
    const float* vrows[kDecodeChunk];
    const bool ok = kbuf && vbuf && tmp && e;
    if (!ok) oom = 1;  // (the private copy starts at INT_MIN, max's identity)
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c) {
      if (!ok) continue;
      const int64_t t0 = c * kDecodeChunk;
      const int64_t n = p.tokens - t0 < kDecodeChunk ? p.tokens - t0 : kDecodeChunk;
      for (int64_t j = 0; j < n; ++j) {
        krows[j] = decode_row<S>(p.k, p, t0 + j, kbuf + j * cols, tmp);
        vrows[j] = decode_row<S>(p.v, p, t0 + j, vbuf + j * cols, tmp);
      }
      for (int64_t h = 0; h < qh; ++h) {
        float* part = partial + (c * qh + h) * stride;
        chunk_partial<S>(q + h * d, krows, vrows, n, (h / per_kv) * d, d, e, part, part + 1,
                         part + 2);
      }
    }
    std::free(kbuf);
    std::free(vbuf);
    std::free(tmp);
    std::free(e);
  }
  if (oom == 0) {
    merge_partials<S>(partial, chunks, qh, d, stride, 1, out, q);  // q is free again: L per head
    for (int64_t h = 0; h < qh; ++h) {
      const typename S::V vl = S::set1(q[h]);
      for (int64_t k = 0; k < d; k += S::W) {
        const int m = d - k < S::W ? static_cast<int>(d - k) : S::W;
        S::store_n(out + h * d + k, S::div(S::load_n(out + h * d + k, m, S::zero()), vl), m);
      }
    }
  }
  std::free(partial);
  std::free(q);
  return oom == 0;
}

}  // namespace kvq::avx
