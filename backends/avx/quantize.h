// SIMD twin of reference/quantize.cpp (docs/spec.md §3), templated on the ISA traits S.
//
// Per group: lo/hi by vector min/max (exact in any order, docs/spec.md §0), then the scalar group
// statistics in the reference's order (lo*r, hi*r, (hi-lo)/(2^b-1), fp16 by F16C, which is
// round-to-nearest-even like reference/half.h), then codes t = x - z; u = t / s (vdivps is
// correctly rounded); rne (roundscale / round_ps, nearest-even); clamp; pack.
// Packing: lane i of a vector shifts its code by (i mod 8) * b and the lanes are OR-reduced,
// giving 8 * b stream bits per 8 codes (docs/spec.md §3 little-endian bitstream).
// One subtlety: min/max hardware returns either zero when +0 and -0 tie, while the reference
// (std::min / std::max in element order) keeps the first; lo or hi equal to 0 is therefore
// re-read as the first zero of the group, so zero16 and scale16 keep the reference's sign.
// Bytes moved per element: 4 read + b/8 written (+ 4/G for scale and zero).
#pragma once

#include <cstdint>
#include <cstring>

#include "backends/avx/kernels.h"

namespace kvq::avx {

// Helpers are static (internal linkage): each ISA unit keeps its own copy.

static inline int64_t stream_bytes_of(int64_t count, int bits) {
  return (count * bits + 7) / 8;
}
static inline int64_t min_i64(int64_t a, int64_t b) {
  return a < b ? a : b;
}
static inline void keep_first(int64_t& slot, int64_t index) {
  if (index >= 0 && (slot < 0 || index < slot)) slot = index;
}

// The first element equal to 0 (either sign), as the reference's ordered min/max would keep it.
static inline float first_zero(const float* x, int64_t n, int64_t stride) {
  for (int64_t k = 0; k < n; ++k)
    if (x[k * stride] == 0.0f) return x[k * stride];
  return 0.0f;
}

static inline int64_t first_nonfinite(const float* x, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    const float v = x[k];
    if (!(v - v == 0.0f)) return k;
  }
  return -1;
}

// Scalar group statistics exactly as reference group_stats (docs/spec.md §3).
template <class S>
struct GroupStats {
  float lo = 0.0f, hi = 0.0f, range = 0.0f;
  uint16_t scale16 = 0, zero16 = 0;
  bool ok = true;

  GroupStats(float min_x, float max_x, const QuantSpec& spec) {
    lo = min_x * spec.clip;
    hi = max_x * spec.clip;
    range = (hi - lo) / static_cast<float>((1 << spec.bits) - 1);
    scale16 = S::to_half(range);
    zero16 = S::to_half(lo);
    ok = (scale16 & 0x7C00u) != 0x7C00u && (spec.int_zero || (zero16 & 0x7C00u) != 0x7C00u);
  }
};

// Codes of W values at p (lanes >= m are 0) for a group with s != 0 (docs/spec.md §3).
template <class S, int B>
inline typename S::VI group_codes(const float* p, int m, typename S::V vs, typename S::V vinv,
                                  typename S::V vz, typename S::V vzp, bool int_zero) {
  using V = typename S::V;
  const V vzero = S::zero();
  const V v = m == S::W ? S::load(p) : S::load_n(p, m, vzero);
  // Float: t = x - z; u = t / s; rne; clamp.  Int: rne(x / s) + zp; clamp.
  const V t = int_zero ? v : S::sub(v, vz);
  // rne(t * (1/s)) equals rne(t / s) unless t / s lies near a half-integer: t * fl(1/s) is
  // within 3 ulp of the correctly rounded t / s, so a lane whose product is farther than
  // |u| * 2^-21 (8 ulp) from every k + 1/2 rounds the same. Any other lane (about 1e-4 of
  // them) sends the vector through the exact division, so the codes are those of docs/spec.md §3.
  // The test is written so that an unordered comparison counts as near: u is inf or NaN when
  // fl(1/s) overflows (integer zero point with s < 2^-128), and those lanes must divide too.
  const V u = S::mul(t, vinv);
  V r = S::round_ne(u);
  const V off = S::sub(S::set1(0.5f), S::abs(S::sub(u, r)));
  if (~S::gt_lanes(off, S::mul(S::abs(u), S::set1(0x1p-21f))) & S::kAllLanes)
    r = S::round_ne(S::div(t, vs));
  if (int_zero) r = S::add(r, vzp);
  r = S::min(S::max(r, vzero), S::set1(static_cast<float>((1 << B) - 1)));
  typename S::VI q = S::to_int(r);
  if (m < S::W) q = S::zero_masked(q, m);
  return q;
}

// Codes of one contiguous group with s != 0, packed. Templated on the bit width so every full
// block stores a compile-time number of bytes; whole blocks of S::pack_vectors<B>() vectors go
// through the ISA's block packer (byte narrowing + multiply-add), the rest through S::pack.
template <class S, int B>
inline void code_loop(const float* x, int64_t n, float s, float z, float zp, bool int_zero,
                      typename S::VI shifts, uint8_t* out) {
  using VI = typename S::VI;
  constexpr int W = S::W;
  constexpr int PV = S::template pack_vectors<B>();
  const typename S::V vs = S::set1(s), vz = S::set1(z), vzp = S::set1(zp);
  const typename S::V vinv = S::set1(1.0f / s);  // fl(1 / s), only a filter (group_codes)
  int64_t k = 0;
  if constexpr (PV > 0) {
    for (; k + PV * W <= n; k += PV * W) {
      VI q[PV];
      for (int i = 0; i < PV; ++i)
        q[i] = group_codes<S, B>(x + k + i * W, W, vs, vinv, vz, vzp, int_zero);
      S::template pack_block<B>(q, out + k * B / 8);
    }
  }
  for (; k < n; k += W) {
    const int m = n - k < W ? static_cast<int>(n - k) : W;
    const VI q = group_codes<S, B>(x + k, m, vs, vinv, vz, vzp, int_zero);
    if constexpr (B == 8) {
      S::store_bytes_n(out + k, q, m);
    } else {
      const uint64_t w = S::pack(q, shifts, B);
      if (m == W)
        std::memcpy(out + k * B / 8, &w, W * B / 8);
      else
        std::memcpy(out + k * B / 8, &w, static_cast<size_t>(stream_bytes_of(m, B)));
    }
  }
}

// min and max of a contiguous group (reference order semantics for +-0); false when it holds a
// non-finite value.
template <class S>
inline bool group_minmax(const float* x, int64_t n, float& lo, float& hi) {
  using V = typename S::V;
  constexpr int W = S::W;
  const V first = S::set1(x[0]);
  V vlo = first, vhi = first, bad = S::zero();
  int64_t k = 0;
  for (; k + W <= n; k += W) {
    const V v = S::load(x + k);
    vlo = S::min(vlo, v);
    vhi = S::max(vhi, v);
    bad = S::nonfinite_acc(bad, v);
  }
  if (k < n) {
    const V v = S::load_n(x + k, static_cast<int>(n - k), first);
    vlo = S::min(vlo, v);
    vhi = S::max(vhi, v);
    bad = S::nonfinite_acc(bad, v);
  }
  if (S::any_bits(bad)) return false;
  lo = S::reduce_min(vlo);
  hi = S::reduce_max(vhi);
  if (lo == 0.0f) lo = first_zero(x, n, 1);
  if (hi == 0.0f) hi = first_zero(x, n, 1);
  return true;
}

// What the code loop of one group needs, from its statistics (docs/spec.md §3). A template, like
// every type here, so each ISA unit owns its instantiation.
template <class S>
struct GroupCoding {
  float s = 0.0f, z = 0.0f, zp = 0.0f;
};

template <class S>
inline GroupCoding<S> group_coding(const GroupStats<S>& g, const QuantSpec& spec) {
  GroupCoding<S> c;
  if (!spec.int_zero) {
    c.s = S::from_half(g.scale16);
    c.z = S::from_half(g.zero16);
  } else {
    c.s = g.range;  // quantize with the fp32 scale (reference/quantize.cpp notes)
    if (c.s != 0.0f) {
      const float maxq = static_cast<float>((1 << spec.bits) - 1);
      float zp = S::round_ne_scalar(-g.lo / c.s);
      zp = zp < 0.0f ? 0.0f : zp;
      zp = maxq < zp ? maxq : zp;
      c.zp = zp;
    }
  }
  return c;
}

template <class S>
inline void group_encode(const float* x, int64_t n, const GroupCoding<S>& c, const QuantSpec& spec,
                         typename S::VI shifts, uint8_t* out) {
  if (c.s == 0.0f) {  // every code is 0
    std::memset(out, 0, static_cast<size_t>(stream_bytes_of(n, spec.bits)));
    return;
  }
  switch (spec.bits) {
    case 1: code_loop<S, 1>(x, n, c.s, c.z, c.zp, spec.int_zero, shifts, out); break;
    case 2: code_loop<S, 2>(x, n, c.s, c.z, c.zp, spec.int_zero, shifts, out); break;
    case 3: code_loop<S, 3>(x, n, c.s, c.z, c.zp, spec.int_zero, shifts, out); break;
    case 4: code_loop<S, 4>(x, n, c.s, c.z, c.zp, spec.int_zero, shifts, out); break;
    default: code_loop<S, 8>(x, n, c.s, c.z, c.zp, spec.int_zero, shifts, out); break;
  }
}

// One row of the token axis: groups of spec.group channels (the last may be the tail).
// Returns the first non-finite index in the row or -1; keeps the first overflowing group.
// Groups go in batches of 16 through three phases (min/max, statistics, codes) so the scalar,
// latency-bound statistics of neighbouring groups overlap instead of stalling each group.
template <class S>
inline int64_t quantize_row_token(const float* x, int64_t row, const QuantSpec& spec,
                                  typename S::VI shifts, const QuantOut& out, int64_t& bad_group) {
  constexpr int kBatch = 16;
  uint8_t* codes = out.codes + row * spec.line_bytes;
  for (int64_t g0 = 0; g0 < spec.groups_per_line; g0 += kBatch) {
    const int nb = static_cast<int>(min_i64(kBatch, spec.groups_per_line - g0));
    float lo[kBatch], hi[kBatch];
    for (int b = 0; b < nb; ++b) {
      const int64_t c0 = (g0 + b) * spec.group;
      if (!group_minmax<S>(x + c0, min_i64(spec.group, spec.cols - c0), lo[b], hi[b]))
        return first_nonfinite(x, spec.cols);
    }
    GroupCoding<S> coding[kBatch];
    bool ok[kBatch];
    for (int b = 0; b < nb; ++b) {
      const int64_t index = row * spec.groups_per_line + g0 + b;
      const GroupStats<S> g(lo[b], hi[b], spec);
      ok[b] = g.ok;
      if (!g.ok) {
        keep_first(bad_group, index);
        continue;
      }
      coding[b] = group_coding<S>(g, spec);
      out.scale[index] = g.scale16;
      if (spec.int_zero)
        out.zero_int[index] = static_cast<uint8_t>(coding[b].zp);
      else
        out.zero[index] = g.zero16;
    }
    for (int b = 0; b < nb; ++b) {
      if (!ok[b]) continue;
      const int64_t c0 = (g0 + b) * spec.group;
      group_encode<S>(x + c0, min_i64(spec.group, spec.cols - c0), coding[b], spec, shifts,
                      codes + (g0 + b) * spec.full_bytes);
    }
  }
  return -1;
}

// Channel axis: the group of rows [0, gs) of block `x` (row stride spec.cols) for the columns
// c0 .. c0+nl-1 (nl <= W). Group index of column c: block_index * cols + c; its stream starts at
// block_bytes + c * stream_bytes(gs, b). Returns the first non-finite flat index relative to x
// or -1.
template <class S>
inline int64_t quantize_channel_chunk(const float* x, int64_t gs, int64_t c0, int nl,
                                      int64_t block_index, const QuantSpec& spec,
                                      const QuantOut& out, uint8_t* block_codes,
                                      int64_t& bad_group) {
  using V = typename S::V;
  using VI = typename S::VI;
  constexpr int W = S::W;
  const int64_t cols = spec.cols;
  const V first = S::load_n(x + c0, nl, S::zero());
  V vlo = first, vhi = first, bad = S::zero();
  for (int64_t r = 0; r < gs; ++r) {
    const V v = S::load_n(x + r * cols + c0, nl, S::zero());
    vlo = S::min(vlo, v);
    vhi = S::max(vhi, v);
    bad = S::nonfinite_acc(bad, v);
  }
  if (S::any_bits(bad)) {
    int64_t best = -1;
    for (int64_t r = 0; r < gs && best < 0; ++r) {
      const int64_t k = first_nonfinite(x + r * cols + c0, nl);
      if (k >= 0) best = r * cols + c0 + k;
    }
    return best;
  }
  // Zero-sign fix-up per lane (see the file comment).
  const unsigned zlo = S::zero_lanes(vlo), zhi = S::zero_lanes(vhi);
  for (int l = 0; l < nl; ++l) {
    if (zlo & (1u << l)) vlo = S::set_lane(vlo, l, first_zero(x + c0 + l, gs, cols));
    if (zhi & (1u << l)) vhi = S::set_lane(vhi, l, first_zero(x + c0 + l, gs, cols));
  }
  const int bits = spec.bits;
  const float maxq = static_cast<float>((1 << bits) - 1);
  const V vclip = S::set1(spec.clip);
  const V lo = S::mul(vlo, vclip);
  const V hi = S::mul(vhi, vclip);
  const V range = S::div(S::sub(hi, lo), S::set1(maxq));
  const VI scale16 = S::to_half_bits(range);
  const VI zero16 = S::to_half_bits(lo);
  unsigned bad_lanes = S::half_nonfinite_lanes(scale16);
  if (!spec.int_zero) bad_lanes |= S::half_nonfinite_lanes(zero16);
  bad_lanes &= (1u << nl) - 1u;
  if (bad_lanes) keep_first(bad_group, block_index * cols + c0 + __builtin_ctz(bad_lanes));
  const int64_t gbase = block_index * cols + c0;
  S::store_half_bits_n(out.scale + gbase, scale16, nl);
  V s, z = S::zero(), zpf = S::zero();
  const V vzero = S::zero(), vmax = S::set1(maxq);
  if (!spec.int_zero) {
    S::store_half_bits_n(out.zero + gbase, zero16, nl);
    s = S::from_half_bits(scale16);
    z = S::from_half_bits(zero16);
  } else {
    s = range;
    const unsigned nonzero = ~S::eq_lanes(s, vzero);
    // zp = clamp(rne(-lo / s)); lanes with s == 0 keep zp = 0 (reference/quantize.cpp notes).
    const V zp = S::min(S::max(S::round_ne(S::div(S::sub(vzero, lo), s)), vzero), vmax);
    zpf = S::select(nonzero, zp, vzero);
    alignas(64) int32_t zpi[W];
    S::store_i(zpi, S::to_int(zpf));
    for (int l = 0; l < nl; ++l) out.zero_int[gbase + l] = static_cast<uint8_t>(zpi[l]);
  }
  // Lanes with s == 0 (or an overflowing scale, which fails the op) produce code 0.
  const unsigned live = ~S::eq_lanes(s, vzero) & ~bad_lanes;
  // Codes accumulate per lane into a 32-bit word (8-bit codes: 4 per word, 3-bit: 8 per 24
  // bits), then each lane's bytes go to its own column stream.
  const int per_word = bits == 3 ? 8 : 32 / bits;
  const int word_bytes = per_word * bits / 8;
  const int64_t stream = stream_bytes_of(gs, bits);
  alignas(64) int32_t words[W];
  VI acc = S::seti(0);
  int in_word = 0;
  int64_t written = 0;
  for (int64_t r = 0; r < gs; ++r) {
    const V v = S::load_n(x + r * cols + c0, nl, S::zero());
    V q = !spec.int_zero ? S::round_ne(S::div(S::sub(v, z), s))
                         : S::add(S::round_ne(S::div(v, s)), zpf);
    q = S::min(S::max(q, vzero), vmax);
    const VI qi = S::select_i(live, S::to_int(q), S::seti(0));
    acc = S::ori(acc, S::shl(qi, in_word * bits));
    if (++in_word == per_word || r + 1 == gs) {
      S::store_i(words, acc);
      const int64_t nbytes = min_i64(word_bytes, stream - written);
      for (int l = 0; l < nl; ++l)
        std::memcpy(block_codes + (c0 + l) * stream + written, &words[l],
                    static_cast<size_t>(nbytes));
      written += nbytes;
      acc = S::seti(0);
      in_word = 0;
    }
  }
  return -1;
}

template <class S>
Faults quantize_kernel(const float* x, const QuantSpec& spec, const QuantOut& out) {
  int64_t bad_input = INT64_MAX, bad_group = INT64_MAX;
  if (!spec.channel_axis) {
    const typename S::VI shifts = S::lane_shifts(spec.bits);
#pragma omp parallel for schedule(static) \
    reduction(min                         \
              : bad_input, bad_group) if (spec.rows * spec.cols > 65536)
    for (int64_t r = 0; r < spec.rows; ++r) {
      int64_t bg = -1;
      const int64_t k = quantize_row_token<S>(x + r * spec.cols, r, spec, shifts, out, bg);
      if (k >= 0 && r * spec.cols + k < bad_input) bad_input = r * spec.cols + k;
      if (bg >= 0 && bg < bad_group) bad_group = bg;
    }
  } else {
    const int64_t chunks = (spec.cols + S::W - 1) / S::W;
    const int64_t items = spec.groups_per_line * chunks;
    const int64_t full = spec.full_bytes;
#pragma omp parallel for schedule(static) \
    reduction(min                         \
              : bad_input, bad_group) if (spec.rows * spec.cols > 65536)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t rb = it / chunks;
      const int64_t c0 = (it % chunks) * S::W;
      const int nl = static_cast<int>(min_i64(S::W, spec.cols - c0));
      const int64_t r0 = rb * spec.group;
      const int64_t gs = min_i64(spec.group, spec.rows - r0);
      int64_t bg = -1;
      const int64_t k = quantize_channel_chunk<S>(x + r0 * spec.cols, gs, c0, nl, rb, spec, out,
                                                  out.codes + rb * spec.cols * full, bg);
      if (k >= 0 && r0 * spec.cols + k < bad_input) bad_input = r0 * spec.cols + k;
      if (bg >= 0 && bg < bad_group) bad_group = bg;
    }
  }
  Faults f;
  f.bad_input = bad_input == INT64_MAX ? -1 : bad_input;
  f.bad_group = bad_group == INT64_MAX ? -1 : bad_group;
  return f;
}

// Row r of a token-axis quantization, dequantized into dst (spec.cols values): x_hat =
// fma((float)q, s, z), or s * (float)(q - zp) for the integer zero point (docs/spec.md §3).
template <class S>
inline void dequantize_token_row(const uint8_t* codes, const uint16_t* scale, const uint16_t* zero,
                                 const uint8_t* zero_int, const QuantSpec& spec,
                                 typename S::VI shifts, int64_t r, float* dst_row) {
  using V = typename S::V;
  using VI = typename S::VI;
  constexpr int W = S::W;
  const int bits = spec.bits;
  for (int64_t gi = 0; gi < spec.groups_per_line; ++gi) {
    const int64_t index = r * spec.groups_per_line + gi;
    const int64_t c0 = gi * spec.group;
    const int64_t n = min_i64(spec.group, spec.cols - c0);
    const uint8_t* in = codes + r * spec.line_bytes + gi * spec.full_bytes;
    float* dst = dst_row + c0;
    const V s = S::set1(S::from_half(scale[index]));
    const V z = spec.int_zero ? S::zero() : S::set1(S::from_half(zero[index]));
    const VI zp = S::seti(spec.int_zero ? zero_int[index] : 0);
    for (int64_t k = 0; k < n; k += W) {
      const int m = n - k < W ? static_cast<int>(n - k) : W;
      VI q;
      if (bits == 8) {
        q = S::load_bytes_n(in + k, m);
      } else {
        uint64_t w = 0;
        std::memcpy(&w, in + k * bits / 8, static_cast<size_t>(stream_bytes_of(m, bits)));
        q = S::unpack(w, shifts, bits);
      }
      const V v = spec.int_zero ? S::mul(s, S::code_to_float(S::subi(q, zp)))
                                : S::fmadd(S::code_to_float(q), s, z);
      S::store_n(dst + k, v, m);
    }
  }
}

// Row r of a channel-axis quantization into dst: code r mod G of every column's stream, one
// element at a time (decode attention reads single rows of such caches; the whole-tensor
// dequantize below goes column-vector-wise instead). Same arithmetic as above.
template <class S>
inline void dequantize_channel_row(const uint8_t* codes, const uint16_t* scale,
                                   const uint16_t* zero, const uint8_t* zero_int,
                                   const QuantSpec& spec, int64_t r, float* dst) {
  const int bits = spec.bits;
  const int64_t rb = r / spec.group, k = r % spec.group;
  const int64_t gs = min_i64(spec.group, spec.rows - rb * spec.group);
  const int64_t stream = stream_bytes_of(gs, bits);
  const uint8_t* block = codes + rb * spec.cols * spec.full_bytes;
  const int64_t bit = k * bits;
  // A code straddles two bytes only for b = 3; the second byte then lies inside the stream.
  const bool two = (bit % 8) + bits > 8;
  const unsigned mask = (1u << bits) - 1u;
  for (int64_t c = 0; c < spec.cols; ++c) {
    const uint8_t* in = block + c * stream + bit / 8;
    const unsigned w = two ? (unsigned{in[0]} | (unsigned{in[1]} << 8)) : unsigned{in[0]};
    const auto code = static_cast<int>((w >> (bit % 8)) & mask);
    const int64_t index = rb * spec.cols + c;
    const float s = S::from_half(scale[index]);
    dst[c] = spec.int_zero ? s * static_cast<float>(code - zero_int[index])
                           : S::fma_scalar(static_cast<float>(code), s, S::from_half(zero[index]));
  }
}

// Dequantize (docs/spec.md §3): x_hat = fma((float)q, s, z), or s * (float)(q - zp) for the integer
// zero point, as reference dequantize.
template <class S>
void dequantize_kernel(const uint8_t* codes, const uint16_t* scale, const uint16_t* zero,
                       const uint8_t* zero_int, const QuantSpec& spec, float* out) {
  using V = typename S::V;
  using VI = typename S::VI;
  constexpr int W = S::W;
  const int bits = spec.bits;
  const VI shifts = S::lane_shifts(bits);
  if (!spec.channel_axis) {
#pragma omp parallel for schedule(static) if (spec.rows * spec.cols > 65536)
    for (int64_t r = 0; r < spec.rows; ++r)
      dequantize_token_row<S>(codes, scale, zero, zero_int, spec, shifts, r, out + r * spec.cols);
    return;
  }
  const int64_t chunks = (spec.cols + W - 1) / W;
  const int64_t items = spec.groups_per_line * chunks;
  const int per_word = bits == 3 ? 8 : 32 / bits;
  const int word_bytes = per_word * bits / 8;
#pragma omp parallel for schedule(static) if (spec.rows * spec.cols > 65536)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t rb = it / chunks;
    const int64_t c0 = (it % chunks) * W;
    const int nl = static_cast<int>(min_i64(W, spec.cols - c0));
    const int64_t r0 = rb * spec.group;
    const int64_t gs = min_i64(spec.group, spec.rows - r0);
    const int64_t stream = stream_bytes_of(gs, bits);
    const uint8_t* block = codes + rb * spec.cols * spec.full_bytes;
    const int64_t gbase = rb * spec.cols + c0;
    alignas(64) float sv[W] = {}, zv[W] = {};
    alignas(64) int32_t zpv[W] = {}, words[W] = {};
    for (int l = 0; l < nl; ++l) {
      sv[l] = S::from_half(scale[gbase + l]);
      if (spec.int_zero)
        zpv[l] = zero_int[gbase + l];
      else
        zv[l] = S::from_half(zero[gbase + l]);
    }
    const V s = S::load(sv), z = S::load(zv);
    const VI zp = S::load_i(zpv);
    const VI mask = S::seti((1 << bits) - 1);
    int64_t read = 0;
    for (int64_t r = 0; r < gs; r += per_word) {
      const int64_t nbytes = min_i64(word_bytes, stream - read);
      for (int l = 0; l < nl; ++l) {
        words[l] = 0;
        std::memcpy(&words[l], block + (c0 + l) * stream + read, static_cast<size_t>(nbytes));
      }
      read += nbytes;
      const VI acc = S::load_i(words);
      const int64_t rows_here = min_i64(per_word, gs - r);
      for (int64_t k = 0; k < rows_here; ++k) {
        const VI q = S::andi(S::shr(acc, static_cast<int>(k) * bits), mask);
        const V v = spec.int_zero ? S::mul(s, S::code_to_float(S::subi(q, zp)))
                                  : S::fmadd(S::code_to_float(q), s, z);
        S::store_n(out + (r0 + r + k) * spec.cols + c0, v, nl);
      }
    }
  }
}

// ---- Token blocks: W tokens at once, channel-major (rotate_quantize.h) ----------------------
//
// Vector c of a block holds channel c of W tokens (lane l = token l), so a group is G whole
// vectors: min/max, the group statistics and the codes are lane-wise vector operations in the
// reference's order (no horizontal reduction, no scalar statistics), and each lane's codes are
// packed into 32-bit words by exact float arithmetic.
//
// Codes (docs/spec.md §3: t = x - z; u = t / s; rne; clamp) use the reciprocal only as a filter:
// u' = fl(t * fl(1/s)), clamped to [L, U] (float zero point: [0, 2^b - 1]; integer: [-zp, 2^b - 1
// - zp]), then r = rne(u'). Clamping before rne is exact: rne is monotone and fixes the integer
// bounds, so rne(clamp(v)) = clamp(rne(v)) (and rne(v) + zp clamped to [0, 2^b-1] equals
// rne(clamp(v, -zp, 2^b-1-zp)) + zp). With v = fl(t / s) the reference quotient, s in
// [2^-125, 2^16] (so fl(1/s) is normal) and q = t / s exactly: |u' - v| <= 3.0001 * 2^-24 * |q|
// (+ 2^-149 on underflow). Where clamp(u') != clamp(v) one of them lies in [L, U], inside
// [-(2^b-1), 2^b-1] (they cannot straddle [L, U]: that needs |u' - v| >= 1, so |q| >= 2^22 and
// both beyond the same bound), so |clamp(u') - clamp(v)| < T = 2^-22 * 2^b. With u' now clamped,
// d = u' - r is exact (Sterbenz), and when |d| < 1/2 - T (both sides exact floats) no
// half-integer lies within T of u', so rne(clamp(v)) = r bit for bit. Eight code words (one
// group at b = 2, G = 128) where any lane misses this bound (a share of about 2T of the lanes on
// smooth data: 1e-6 at b = 2, 1e-4 at b = 8) are recomputed with the correctly rounded division.
//
// Lanes the block does not finish go back to the per-token path, which follows the reference's
// order of operations and errors: a group with min or max equal to 0 (the reference keeps the
// first zero's sign), s == 0 or s < 2^-125 (every code 0, or fl(1/s) not normal), a scale or zero
// that overflows fp16, and any NaN (seen in the codes: NaN survives the clamp, whose operands are
// ordered so, and the exact float packing). An infinite value makes min or max infinite and
// the scale overflow, so every non-finite input or rotated value sends its token back.

// What the codes of one group need, lane by lane (soa_group): x + negz is x - z (negz = 0 for the
// integer zero point), inv = fl(1/s), codes clamped to [lower, upper] before rne, zp_half = zp *
// sum_k 2^(B*k) (integer zero point) added to each half word.
template <class S>
struct SoaCoding {
  typename S::V negz, inv, s, lower, upper, zp_half;
};

// One code: r = rne(clamp(u)) with u from the reciprocal (filter bound in m) or, when Exact, the
// correctly rounded division.
template <class S, bool IntZero, bool Exact>
inline typename S::V soa_code(const float* p, const SoaCoding<S>& k, typename S::V& m) {
  const typename S::V x = S::load(p);
  const typename S::V t = IntZero ? x : S::add(k.negz, x);  // x + (-z) is x - z bit for bit
  typename S::V u = Exact ? S::div(t, k.s) : S::mul(t, k.inv);
  u = S::min(k.upper, S::max(k.lower, u));  // operands so ordered that a NaN u stays NaN
  typename S::V d;
  const typename S::V r = S::round_split(u, d);
  if constexpr (!Exact) m = S::max_abs(m, d);
  return r;
}

// nw <= 8 consecutive 32-bit code words of every lane into w (channels from x); returns the
// lanes' OR of the words' halves, whose sign bit marks a NaN. A word holds 2H codes, H = 16 / B
// per 16-bit half, code k of a half at bits B*k: each half is summed in float by Horner (exact:
// integers below 2^17); the two halves run interleaved so their chains overlap. m: the largest
// |u - r| of the filter (not Exact).
template <class S, int B, bool IntZero, bool Exact>
inline typename S::VI soa_words(const float* x, int nw, const SoaCoding<S>& k, typename S::VI* w,
                                typename S::V& m) {
  using V = typename S::V;
  using VI = typename S::VI;
  constexpr int W = S::W;
  constexpr int H = 16 / B;
  VI nan = S::seti(0);
  V m1 = S::zero();
  const V f = S::set1(static_cast<float>(1 << B));
  for (int i = 0; i < nw; ++i) {
    const float* p = x + i * 2 * H * W;
    V lo = soa_code<S, IntZero, Exact>(p + (H - 1) * W, k, m);
    V hi = soa_code<S, IntZero, Exact>(p + (2 * H - 1) * W, k, m1);
#pragma GCC unroll 16
    for (int c = H - 2; c >= 0; --c) {
      lo = S::add(S::mul(lo, f), soa_code<S, IntZero, Exact>(p + c * W, k, m));
      hi = S::add(S::mul(hi, f), soa_code<S, IntZero, Exact>(p + (H + c) * W, k, m1));
      // An empty asm that "changes" the sums keeps each code's add here: left alone, GCC
      // computes every code of the word first and spills them (16 AVX2 registers).
      asm("" : "+v"(lo), "+v"(hi));
    }
    if constexpr (IntZero) {  // codes are r + zp: add zp * sum_k 2^(B*k) once per half word
      lo = S::add(lo, k.zp_half);
      hi = S::add(hi, k.zp_half);
    }
    const VI li = S::to_int(lo), hi_i = S::to_int(hi);  // NaN -> 0x80000000
    nan = S::ori(nan, S::ori(li, hi_i));
    w[i] = S::ori(li, S::shl16(hi_i));
  }
  if constexpr (!Exact) m = S::max(m, m1);
  return nan;
}

// The codes of one group (G * B / 32 words) for every lane, written to each token's stream in
// chunks of 8 words; a chunk where a live lane misses the filter bound (see above) is recomputed
// with the correctly rounded division. Returns the lanes whose codes saw a NaN.
template <class S, int B, bool IntZero>
inline unsigned soa_group_codes(const float* x, int64_t G, const SoaCoding<S>& k, unsigned flag,
                                uint8_t* codes, int64_t stride) {
  using V = typename S::V;
  using VI = typename S::VI;
  constexpr int H = 16 / B;
  constexpr float kBound = 0.5f - static_cast<float>(1 << B) * 0x1p-22f;
  const int64_t words = G * B / 32;
  VI nan = S::seti(0);
  for (int64_t w0 = 0; w0 < words; w0 += 8) {
    const int nw = static_cast<int>(min_i64(8, words - w0));
    const float* p = x + w0 * 2 * H * S::W;
    VI wv[8];
    V m = S::zero();
    VI nan_c = soa_words<S, B, IntZero, false>(p, nw, k, wv, m);
    if (~S::gt_lanes(S::set1(kBound), m) & ~flag & ~S::sign_lanes(nan_c) & S::kAllLanes) {
      SoaCoding<S> exact = k;
      exact.s = S::select(flag, S::set1(1.0f), k.s);
      nan_c = soa_words<S, B, IntZero, true>(p, nw, exact, wv, m);
    }
    nan = S::ori(nan, nan_c);
    S::store_words(wv, nw, codes + w0 * 4, stride);
  }
  return S::sign_lanes(nan);
}

// One group of a token block: x holds G vectors (G * B a multiple of 32). Writes scale, zero and
// codes of every lane (rows of codes `code_stride` bytes apart, statistics `meta_stride` groups
// apart) and returns the lanes that must be redone by the per-token path.
template <class S, int B, bool IntZero>
inline unsigned soa_group(const float* x, int64_t G, float clip, uint8_t* codes,
                          int64_t code_stride, uint16_t* scale, uint16_t* zero, uint8_t* zero_int,
                          int64_t meta_stride) {
  using V = typename S::V;
  using VI = typename S::VI;
  constexpr int W = S::W;
  constexpr float maxq = static_cast<float>((1 << B) - 1);
  // min / max per lane, four independent chains (G is a multiple of 4 here), 8 vectors a turn.
  V lo[4], hi[4];
  for (int i = 0; i < 4; ++i) lo[i] = hi[i] = S::load(x + i * W);
  int64_t c = 4;
  for (; c + 8 <= G; c += 8) {
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      const V v = S::load(x + (c + i) * W);
      lo[i % 4] = S::min(lo[i % 4], v);
      hi[i % 4] = S::max(hi[i % 4], v);
    }
  }
  for (; c < G; c += 4) {
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      const V v = S::load(x + (c + i) * W);
      lo[i] = S::min(lo[i], v);
      hi[i] = S::max(hi[i], v);
    }
  }
  const V vlo = S::min(S::min(lo[0], lo[1]), S::min(lo[2], lo[3]));
  const V vhi = S::max(S::max(hi[0], hi[1]), S::max(hi[2], hi[3]));
  // Statistics in the reference's order (GroupStats), one lane per token.
  unsigned flag = S::zero_lanes(vlo) | S::zero_lanes(vhi);
  const V clo = S::mul(vlo, S::set1(clip));
  const V chi = S::mul(vhi, S::set1(clip));
  const V range = S::div(S::sub(chi, clo), S::set1(maxq));
  const VI s16 = S::to_half_bits(range);
  flag |= S::half_nonfinite_lanes(s16);
  V s, negz = S::zero(), lower = S::zero(), upper = S::set1(maxq), zp_half = S::zero();
  alignas(64) int32_t zpi[W];
  if constexpr (!IntZero) {
    const VI z16 = S::to_half_bits(clo);
    flag |= S::half_nonfinite_lanes(z16);
    s = S::from_half_bits(s16);
    negz = S::neg(S::from_half_bits(z16));
    alignas(64) int32_t zb[W];
    S::store_i(zb, z16);
    for (int l = 0; l < W; ++l) zero[l * meta_stride] = static_cast<uint16_t>(zb[l]);
  } else {
    s = range;  // quantize with the fp32 scale; zp = clamp(rne(-lo / s), 0, 2^b - 1)
    const V zp = S::min(S::set1(maxq), S::max(S::zero(), S::round_ne(S::div(S::neg(clo), s))));
    lower = S::neg(zp);
    upper = S::sub(S::set1(maxq), zp);
    zp_half = S::mul(zp, S::set1(static_cast<float>(0xFFFF / ((1 << B) - 1))));
    S::store_i(zpi, S::to_int(zp));
  }
  {
    alignas(64) int32_t sb[W];
    S::store_i(sb, s16);
    for (int l = 0; l < W; ++l) scale[l * meta_stride] = static_cast<uint16_t>(sb[l]);
    if constexpr (IntZero)
      for (int l = 0; l < W; ++l) zero_int[l * meta_stride] = static_cast<uint8_t>(zpi[l]);
  }
  flag |= ~S::le_lanes(S::set1(0x1p-125f), s) & S::kAllLanes;  // s == 0, tiny or NaN
  // Lanes already sent back compute harmless codes (u = 0) so they trigger nothing below.
  SoaCoding<S> k;
  k.negz = S::select(flag, S::zero(), negz);
  k.inv = S::select(flag, S::zero(), S::div(S::set1(1.0f), s));
  k.s = s;
  k.lower = lower;
  k.upper = upper;
  k.zp_half = zp_half;
  flag |= soa_group_codes<S, B, IntZero>(x, G, k, flag, codes, code_stride);
  return flag;
}

}  // namespace kvq::avx
