// Decode attention computed on the packed codes (docs/spec.md §7, a tolerance op gated against the
// fp64 oracle), templated on the ISA traits S. The rebuild kernel (attention_decode.h) remains
// for the caches this one does not take (pre-RoPE K, the grouped K rotation, fp32 rows).
//
// Linear algebra instead of rebuilt rows. In a group with scale s and zero z the dequantized
// value is s c + z, so for a query segment q over the group's channels
//   q . k_hat = s (q . c) + z (sum q)          and   sum_j p_j v_hat_j = sum_j (p_j s_j) c_j + sum_j p_j z_j.
// A per-head Hadamard on K moves to the query once (q . H y = (H q) . y, H symmetric); one on V
// moves to the output once (sum_j p_j H y_j = H sum_j p_j y_j). Kept fp16 rows (sinks) are in the
// original basis: they meet the unrotated query and their own output sum.
//
// Codes are never widened to rows in memory:
// - K, lanes = tokens: a gather reads dword k of W consecutive tokens' code rows; field f of
//   that dword (AND with its mask, convert) is channel (32 / b) k + f of every token times
//   2^(b f), and the query is pre-scaled by 2^-(b f) (exact powers of two), so one FMA with a
//   broadcast query element advances W dot products. No horizontal sums.
// - V, lanes = channels: a broadcast of W b bits, one AND with per-lane field masks and one
//   convert give W channels of one token (scaled by 2^(b m), undone at the end of a run), and
//   one FMA per query head with the broadcast weight p_j s_j accumulates them.
// Every query head of a KV head reuses each code load (GQA), up to 4 heads per pass.
//
// Schedule: fixed blocks of kCodeBlock tokens; a block's partial softmax (max m, sum l, and the
// unnormalized sums in the stored and the original basis) is computed by one thread, K pass,
// exp, then V pass, and the blocks are merged in block order (merge_partials), so the result
// does not depend on the thread count. Within a block, runs of tokens stored as consecutive rows
// of one vector-friendly part take the code path; kept rows, outliers, other layouts and the
// K tail shorter than W tokens take the per-token path (a dequantized row and dot products).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "backends/avx/attention_decode.h"

namespace kvq::avx {

constexpr int64_t kCodeBlock = 512;  // tokens per partial: K and V codes of a block stay in L2

// A part whose token rows the code path reads: token axis, float zero point, b in {1, 2, 4, 8},
// whole groups that either hold whole heads or tile them, dword-aligned head segments.
inline bool code_part(const QuantSpec& s, int64_t d, int w) {
  const int b = s.bits;
  if (s.channel_axis || s.int_zero || !(b == 1 || b == 2 || b == 4 || b == 8)) return false;
  const int64_t g = s.group, seg = g < d ? g : d;
  return g > 0 && s.cols % g == 0 && (g % d == 0 || d % g == 0) && (d * b) % 32 == 0 &&
         (seg * b) % 32 == 0 && seg % w == 0 && d % w == 0 && d / seg <= 16;
}

// Whether the whole problem fits the code path (else the rebuild kernel runs).
inline bool code_problem(const DecodeProblem& p) {
  const DecodeSide& k = p.k;
  const DecodeSide& v = p.v;
  return !k.f32 && !v.f32 && !k.rope_freq && !k.unperm && !v.unperm &&
         (k.fwht_n == 0 || k.fwht_n == p.head_dim) && (v.fwht_n == 0 || v.fwht_n == p.head_dim);
}

// Byte offset, within a token's code row, of channel c (of the row) in a code part.
inline int64_t code_offset(const QuantSpec& s, int64_t c) {
  return (c / s.group) * s.full_bytes + (c % s.group) * s.bits / 8;
}

// Everything a thread needs for one block; views into the kernel's shared inputs.
struct CodeBlockArgs {
  const DecodeProblem* p = nullptr;
  const float* q_plain = nullptr;  // [qh][d] q / sqrt(d): meets kept (original-basis) K rows
  const float* q_rot = nullptr;    // [qh][d] H q_plain when K is rotated per head, else q_plain
  const float* q_code[9] = {};     // [bits]: q_rot with channel c scaled by 2^-(b (c mod 32/b))
  const uint8_t* k_ok = nullptr;   // per K part: code_part
  const uint8_t* v_ok = nullptr;
};

struct CodeScratch {
  float* score = nullptr;  // [qh][kCodeBlock]: scores, then e^(score - m)
  float* sz = nullptr;     // [2][groups per row][kCodeBlock]: scale and zero of a run's tokens
  float* w = nullptr;      // [4][kCodeBlock]: p_j s_j of one segment
  float* row = nullptr;    // [cols]: a dequantized or fp16 row (per-token path)
  float* sum_q = nullptr;  // [qh][16]: segment sums of the rotated query
};

inline bool has_outliers(const DecodeSide& s, int64_t t) {
  return s.outlier_begin && s.outlier_begin[t] != s.outlier_begin[t + 1];
}

// End of the code run starting at token t (t when t cannot take the code path).
inline int64_t code_run_end(const DecodeSide& s, const uint8_t* ok, int64_t t, int64_t t1) {
  const int32_t part = s.part[t];
  if (part < 0 || !ok[part] || has_outliers(s, t)) return t;
  int64_t e = t + 1;
  while (e < t1 && s.part[e] == part && s.row[e] == s.row[e - 1] + 1 && !has_outliers(s, e)) ++e;
  return e;
}

// The V code rows of tokens t .. t + n - 1 when they are consecutive rows of one token-axis part
// (prefetched during the K pass), else null.
inline const uint8_t* value_rows(const DecodeSide& v, int64_t t, int64_t n) {
  const int32_t part = v.part[t];
  if (part < 0) return nullptr;
  const QuantSpec& s = v.parts[part].spec;
  if (s.channel_axis || v.part[t + n - 1] != part || v.row[t + n - 1] != v.row[t] + n - 1)
    return nullptr;
  return v.parts[part].codes + v.row[t] * s.line_bytes;
}

// Piece i of n of [at, at + bytes): prefetches spread over a loop instead of one burst that
// stalls on the line fill buffers. L1 = true prefetches into L1 (T0), else into L2 (T1); the hint
// is spelled at the call because GCC takes an enum and clang an int.
template <bool L1>
inline void prefetch_piece(const uint8_t* at, int64_t bytes, int64_t i, int64_t n) {
  if (!at) return;
  const int64_t lines = (bytes + 63) / 64;
  for (int64_t l = i * lines / n; l < (i + 1) * lines / n; ++l)
    if constexpr (L1)
      _mm_prefetch(reinterpret_cast<const char*>(at + 64 * l), _MM_HINT_T0);
    else
      _mm_prefetch(reinterpret_cast<const char*>(at + 64 * l), _MM_HINT_T1);
}

// Scale and zero of groups [0, gpl) of rows row0 .. row0 + n - 1 into sz[0][g][j], sz[1][g][j]:
// W rows at a time by 32-bit gathers (the fp16 in the low half) while the 2 bytes read past a
// tile's last value stay inside the arrays, the rest a row at a time.
template <class S>
inline void load_scales(const DecodePart& part, int64_t row0, int64_t n, float* sz) {
  constexpr int W = S::W;
  const int64_t gpl = part.spec.groups_per_line, total = part.spec.rows * gpl;
  alignas(64) int32_t off[W];
  for (int l = 0; l < W; ++l) off[l] = static_cast<int32_t>(2 * l * gpl);
  const typename S::VI voff = S::load_i(off), low = S::seti(0xFFFF);
  int64_t j = 0;
  for (; j + W <= n && (row0 + j + W) * gpl < total; j += W)
    for (int64_t g = 0; g < gpl; ++g) {
      const int64_t i = (row0 + j) * gpl + g;
      const auto* s = reinterpret_cast<const uint8_t*>(part.scale + i);
      const auto* z = reinterpret_cast<const uint8_t*>(part.zero + i);
      S::store(sz + g * kCodeBlock + j, S::from_half_bits(S::andi(S::gather_u32(s, voff), low)));
      S::store(sz + (gpl + g) * kCodeBlock + j,
               S::from_half_bits(S::andi(S::gather_u32(z, voff), low)));
    }
  alignas(64) float s[W], z[W];
  for (; j < n; ++j)
    for (int64_t g0 = 0; g0 < gpl; g0 += W) {  // widen a row's groups, then transpose
      const int w = gpl - g0 < W ? static_cast<int>(gpl - g0) : W;
      const int64_t i = (row0 + j) * gpl + g0;
      S::store(s, S::load_f16_n(part.scale + i, w));
      S::store(z, S::load_f16_n(part.zero + i, w));
      for (int g = 0; g < w; ++g) {
        sz[(g0 + g) * kCodeBlock + j] = s[g];
        sz[(gpl + g0 + g) * kCodeBlock + j] = z[g];
      }
    }
}

// Scores of NH query heads (rows of `qc`, code-scaled, stride d; `sum_q` [h][segment] their
// segment sums) against the W tokens of one tile of KV head g (`rows`: the tile's first code
// row), written to score[h][0 .. W) (stride kCodeBlock); sz: the tile's scales and zeros.
template <class S, int B, int NH>
inline void code_scores(const QuantSpec& s, const uint8_t* rows, typename S::VI voff, int64_t g,
                        int64_t d, const float* qc, const float* sum_q, const float* sz,
                        float* score) {
  using V = typename S::V;
  using VI = typename S::VI;
  constexpr int F = 32 / B;
  const int64_t seg = s.group < d ? s.group : d, segs = d / seg, gpl = s.groups_per_line;
  V sc[NH];
  for (int h = 0; h < NH; ++h) sc[h] = S::zero();
  for (int64_t sg = 0; sg < segs; ++sg) {
    const int64_t c0 = g * d + sg * seg, grp = c0 / s.group;
    const uint8_t* base = rows + code_offset(s, c0);
    V acc[NH][2];
    for (int h = 0; h < NH; ++h) acc[h][0] = acc[h][1] = S::zero();
    for (int64_t k = 0; k < seg / F; ++k) {
      const VI word = S::gather_u32(base + 4 * k, voff);
      const float* q = qc + sg * seg + k * F;
#pragma GCC unroll 32
      for (int f = 0; f < F; ++f) {
        const VI field = S::andi(word, S::seti(static_cast<int32_t>(((1u << B) - 1u) << (B * f))));
        const V c = f == F - 1 ? S::cvt_top(field) : S::code_to_float(field);
        for (int h = 0; h < NH; ++h)
          acc[h][f & 1] = S::fmadd(S::set1(q[h * d + f]), c, acc[h][f & 1]);
      }
    }
    const V vs = S::load(sz + grp * kCodeBlock);
    const V vz = S::load(sz + (gpl + grp) * kCodeBlock);
    for (int h = 0; h < NH; ++h)
      sc[h] = S::fmadd(vz, S::set1(sum_q[h * 16 + sg]),
                       S::fmadd(vs, S::add(acc[h][0], acc[h][1]), sc[h]));
  }
  for (int h = 0; h < NH; ++h) S::store(score + h * kCodeBlock, sc[h]);
}

// o[h][c] += sum_j e[h][j] v_hat_j[c] over a run of n tokens of KV head g, for NH query heads
// (e rows stride kCodeBlock from e + j0, o rows stride `o_stride`), in the stored basis.
template <class S, int B, int NH>
inline void code_values(const DecodePart& part, const uint8_t* rows, int64_t n, int64_t g,
                        int64_t d, const float* e, const float* sz, int64_t j0, float* w,
                        float* o, int64_t o_stride) {
  using V = typename S::V;
  using VI = typename S::VI;
  constexpr int W = S::W, P = W * B, R = P >= 32 ? P / 32 : 1;
  const QuantSpec& s = part.spec;
  const int64_t seg = s.group < d ? s.group : d, segs = d / seg, gpl = s.groups_per_line;
  // Lane l reads field m = l / R of dword r = l mod R of the P-bit unit: channel r (32 / B) + m
  // of the vector's W, scaled by 2^(B m).
  alignas(64) int32_t mask[W];
  alignas(64) float unscale[W];
  int channel[W];
  for (int l = 0; l < W; ++l) {
    const int r = l % R, m = l / R;
    mask[l] = static_cast<int32_t>(((1u << B) - 1u) << (B * m));
    unscale[l] = std::ldexp(1.0f, -B * m);
    channel[l] = r * (32 / B) + m;
  }
  const VI vmask = S::load_i(mask);
  for (int64_t sg = 0; sg < segs; ++sg) {
    const int64_t c0 = g * d + sg * seg, grp = c0 / s.group;
    const float* vs = sz + grp * kCodeBlock;
    const float* vz = sz + (gpl + grp) * kCodeBlock;
    float zsum[NH];
    for (int h = 0; h < NH; ++h) {  // w = p s per token; sum_j p_j z_j
      V zacc = S::zero();
      for (int64_t j = 0; j < n; j += W) {
        const int m = n - j < W ? static_cast<int>(n - j) : W;
        const V p = S::load_n(e + h * kCodeBlock + j0 + j, m, S::zero());
        S::store_n(w + h * kCodeBlock + j, S::mul(p, S::load_n(vs + j, m, S::zero())), m);
        zacc = S::fmadd(p, S::load_n(vz + j, m, S::zero()), zacc);
      }
      zsum[h] = S::reduce_add(zacc);
    }
    const uint8_t* base = rows + code_offset(s, c0);
    for (int64_t k = 0; k < seg; k += 2 * W) {
      const bool two = k + W < seg;
      V acc[NH][2];
      for (int h = 0; h < NH; ++h) acc[h][0] = acc[h][1] = S::zero();
      const uint8_t* at = base + k * B / 8;
      for (int64_t j = 0; j < n; ++j, at += s.line_bytes) {
        const VI x0 = S::andi(S::template bcast_bits<P>(at), vmask);
        const V c0v = P >= 32 ? S::cvt_u32(x0) : S::code_to_float(x0);
        for (int h = 0; h < NH; ++h) acc[h][0] = S::fmadd(S::set1(w[h * kCodeBlock + j]), c0v, acc[h][0]);
        if (two) {
          const VI x1 = S::andi(S::template bcast_bits<P>(at + P / 8), vmask);
          const V c1v = P >= 32 ? S::cvt_u32(x1) : S::code_to_float(x1);
          for (int h = 0; h < NH; ++h)
            acc[h][1] = S::fmadd(S::set1(w[h * kCodeBlock + j]), c1v, acc[h][1]);
        }
      }
      alignas(64) float lanes[W];
      for (int h = 0; h < NH; ++h)
        for (int v = 0; v < (two ? 2 : 1); ++v) {
          S::store(lanes, acc[h][v]);
          float* oc = o + h * o_stride + sg * seg + k + v * W;
          for (int l = 0; l < W; ++l) oc[channel[l]] += lanes[l] * unscale[l];
        }
    }
    for (int h = 0; h < NH; ++h)
      for (int64_t c = sg * seg; c < (sg + 1) * seg; ++c) o[h * o_stride + c] += zsum[h];
  }
}

// Dispatch on the code width and the number of query heads in a pass (1..4).
template <class S, template <class, int, int> class Body, class... A>
inline void by_bits_heads(int bits, int nh, A&&... a) {
  auto heads = [&]<int B>() {
    switch (nh) {
      case 1: Body<S, B, 1>::run(a...); break;
      case 2: Body<S, B, 2>::run(a...); break;
      case 3: Body<S, B, 3>::run(a...); break;
      default: Body<S, B, 4>::run(a...); break;
    }
  };
  switch (bits) {
    case 1: heads.template operator()<1>(); break;
    case 2: heads.template operator()<2>(); break;
    case 4: heads.template operator()<4>(); break;
    default: heads.template operator()<8>(); break;
  }
}
template <class S, int B, int NH>
struct ScoresBody {
  template <class... A>
  static void run(A&&... a) { code_scores<S, B, NH>(a...); }
};
template <class S, int B, int NH>
struct ValuesBody {
  template <class... A>
  static void run(A&&... a) { code_values<S, B, NH>(a...); }
};

// One block [t0, t1): partial (m, l, o_stored[d], o_plain[d]) per query head at part + h * stride.
template <class S>
inline void code_block(const CodeBlockArgs& a, const CodeScratch& sc, int64_t t0, int64_t t1,
                       float* part, int64_t stride) {
  using V = typename S::V;
  constexpr int W = S::W;
  const DecodeProblem& p = *a.p;
  const int64_t d = p.head_dim, cols = p.heads * d, qh = p.q_heads, per_kv = qh / p.heads;
  const int64_t n = t1 - t0;
  // K pass: scores[h][j].
  for (int64_t t = t0; t < t1;) {
    const int64_t end = code_run_end(p.k, a.k_ok, t, t1);
    if (end - t >= W) {
      const int64_t m = (end - t) / W * W;
      const DecodePart& part = p.k.parts[p.k.part[t]];
      const QuantSpec& qs = part.spec;
      const int64_t row0 = p.k.row[t];
      load_scales<S>(part, row0, m, sc.sz);
      const uint8_t* rows = part.codes + row0 * qs.line_bytes;
      const float* qc = a.q_code[qs.bits];
      const int64_t seg = qs.group < d ? qs.group : d;
      for (int64_t h = 0; h < qh; ++h)  // segment sums of the rotated query
        for (int64_t sg = 0; sg < d / seg; ++sg) {
          float acc = 0.0f;
          for (int64_t c = sg * seg; c < (sg + 1) * seg; ++c) acc += a.q_rot[h * d + c];
          sc.sum_q[h * 16 + sg] = acc;
        }
      alignas(64) int32_t off[W];
      for (int l = 0; l < W; ++l) off[l] = static_cast<int32_t>(l * qs.line_bytes);
      const typename S::VI voff = S::load_i(off);
      const int64_t tile_bytes = W * qs.line_bytes;
      for (int64_t j = 0; j < m; j += W) {
        const uint8_t* tile = rows + j * qs.line_bytes;
        // The next tile's K rows (into L1) and this tile's V rows (into L2, for the V pass),
        // a piece per KV head.
        const uint8_t* next_k = j + W < m ? tile + tile_bytes : nullptr;
        const uint8_t* v_rows = value_rows(p.v, t + j, W);
        const int64_t v_bytes = v_rows ? W * p.v.parts[p.v.part[t + j]].spec.line_bytes : 0;
        for (int64_t g = 0; g < p.heads; ++g)
          for (int64_t h0 = 0; h0 < per_kv; h0 += 4) {
            const int64_t h = g * per_kv + h0;
            const int nh = static_cast<int>(per_kv - h0 < 4 ? per_kv - h0 : 4);
            if (h0 == 0) {
              prefetch_piece<true>(next_k, tile_bytes, g, p.heads);
              prefetch_piece<false>(v_rows, v_bytes, g, p.heads);
            }
            by_bits_heads<S, ScoresBody>(qs.bits, nh, qs, tile, voff, g, d, qc + h * d,
                                         sc.sum_q + h * 16, sc.sz + j,
                                         sc.score + h * kCodeBlock + (t - t0) + j);
          }
      }
      t += m;
      continue;
    }
    bool kept = false;
    const float* x = stored_row<S>(p.k, cols, t, sc.row, &kept);
    const float* q = kept ? a.q_plain : a.q_rot;
    for (int64_t h = 0; h < qh; ++h)
      sc.score[h * kCodeBlock + (t - t0)] = dot<S>(q + h * d, x + (h / per_kv) * d, d);
    ++t;
  }
  // Softmax of the block: m, e = exp(score - m) in place, l; the sums start at 0.
  for (int64_t h = 0; h < qh; ++h) {
    float* s = sc.score + h * kCodeBlock;
    V vmax = S::set1(-INFINITY);
    for (int64_t j = 0; j < n; j += W)
      vmax = S::max(vmax, S::load_n(s + j, n - j < W ? static_cast<int>(n - j) : W, vmax));
    const float mx = S::reduce_max(vmax);
    const V vm = S::set1(mx);
    V vl = S::zero();
    for (int64_t j = 0; j < n; j += W) {
      const int w = n - j < W ? static_cast<int>(n - j) : W;
      const V x = exp_nonpositive<S>(S::sub(S::load_n(s + j, w, vm), vm));
      S::store_n(s + j, x, w);
      vl = S::add(vl, S::load_n(s + j, w, S::zero()));
    }
    float* ph = part + h * stride;
    ph[0] = mx;
    ph[1] = S::reduce_add(vl);
    for (int64_t c = 0; c < 2 * d; ++c) ph[2 + c] = 0.0f;
  }
  // V pass: o_stored (code rows, stored basis) and o_plain (kept rows).
  for (int64_t t = t0; t < t1;) {
    const int64_t end = code_run_end(p.v, a.v_ok, t, t1);
    if (end > t) {
      const int64_t m = end - t;
      const DecodePart& dp = p.v.parts[p.v.part[t]];
      const int64_t row0 = p.v.row[t];
      load_scales<S>(dp, row0, m, sc.sz);
      const uint8_t* rows = dp.codes + row0 * dp.spec.line_bytes;
      for (int64_t g = 0; g < p.heads; ++g)
        for (int64_t h0 = 0; h0 < per_kv; h0 += 4) {
          const int64_t h = g * per_kv + h0;
          const int nh = static_cast<int>(per_kv - h0 < 4 ? per_kv - h0 : 4);
          by_bits_heads<S, ValuesBody>(dp.spec.bits, nh, dp, rows, m, g, d,
                                       sc.score + h * kCodeBlock, sc.sz, t - t0, sc.w,
                                       part + h * stride + 2, stride);
        }
      t = end;
      continue;
    }
    bool kept = false;
    const float* x = stored_row<S>(p.v, cols, t, sc.row, &kept);
    for (int64_t h = 0; h < qh; ++h) {
      const V e = S::set1(sc.score[h * kCodeBlock + (t - t0)]);
      const float* xh = x + (h / per_kv) * d;
      float* o = part + h * stride + 2 + (kept ? d : 0);
      for (int64_t c = 0; c < d; c += W) {
        const int w = d - c < W ? static_cast<int>(d - c) : W;
        S::store_n(o + c, S::fmadd(e, S::load_n(xh + c, w, S::zero()), S::load_n(o + c, w, S::zero())), w);
      }
    }
    ++t;
  }
}

// The kernel: q prepared once (1 / sqrt(d), the K Hadamard, the code scaling), blocks in
// parallel, merge in block order, then the V Hadamard on the stored-basis sum and the kept rows'
// sum added: o = (H_v O_stored + O_plain) / L.
template <class S>
bool attention_codes_kernel(const DecodeProblem& p, float* out) {
  constexpr int W = S::W;
  const int64_t d = p.head_dim, qh = p.q_heads, cols = p.heads * d;
  const int64_t blocks = (p.tokens + kCodeBlock - 1) / kCodeBlock;
  const int64_t stride = 2 + 2 * d;
  int kparts = 0, vparts = 0;
  int64_t gpl = 1;
  for (int64_t t = 0; t < p.tokens; ++t) {
    kparts = p.k.part[t] + 1 > kparts ? p.k.part[t] + 1 : kparts;
    vparts = p.v.part[t] + 1 > vparts ? p.v.part[t] + 1 : vparts;
  }
  uint8_t k_ok[64] = {}, v_ok[64] = {};
  if (kparts > 64 || vparts > 64) return attention_rebuild_kernel<S>(p, out);
  CodeBlockArgs a;
  a.p = &p;
  bool bits_used[9] = {};
  for (int i = 0; i < kparts; ++i) {
    k_ok[i] = code_part(p.k.parts[i].spec, d, W);
    if (k_ok[i]) bits_used[p.k.parts[i].spec.bits] = true;
    if (k_ok[i] && p.k.parts[i].spec.groups_per_line > gpl) gpl = p.k.parts[i].spec.groups_per_line;
  }
  for (int i = 0; i < vparts; ++i) {
    v_ok[i] = code_part(p.v.parts[i].spec, d, W);
    if (v_ok[i] && p.v.parts[i].spec.groups_per_line > gpl) gpl = p.v.parts[i].spec.groups_per_line;
  }
  a.k_ok = k_ok;
  a.v_ok = v_ok;
  float* partial = scratch_floats(blocks * qh * stride);
  float* q = scratch_floats((6 + 1) * qh * d + qh);
  if (!partial || !q) {
    std::free(partial);
    std::free(q);
    return false;
  }
  float* q_plain = q;
  float* q_rot = q + qh * d;
  const float root_d = std::sqrt(static_cast<float>(d));
  for (int64_t i = 0; i < qh * d; ++i) q_plain[i] = p.q[i] / root_d;
  for (int64_t i = 0; i < qh * d; ++i) q_rot[i] = q_plain[i];
  if (p.k.fwht_n > 0) fwht_row<S>(q_rot, qh * d, p.k.fwht_n, p.k.fwht_scale);
  a.q_plain = q_plain;
  a.q_rot = q_rot;
  const int widths[4] = {1, 2, 4, 8};
  for (int i = 0; i < 4; ++i) {
    const int b = widths[i];
    if (!bits_used[b]) continue;
    float* qc = q + (2 + i) * qh * d;
    for (int64_t h = 0; h < qh; ++h)
      for (int64_t c = 0; c < d; ++c)
        qc[h * d + c] = std::ldexp(q_rot[h * d + c], -b * static_cast<int>(c % (32 / b)));
    a.q_code[b] = qc;
  }
  int oom = 0;
#pragma omp parallel reduction(max : oom) if (blocks > 1)
  {
    CodeScratch sc;
    sc.score = scratch_floats(qh * kCodeBlock);
    sc.sz = scratch_floats(2 * gpl * kCodeBlock);
    sc.w = scratch_floats(4 * kCodeBlock);
    sc.row = scratch_floats(cols);
    sc.sum_q = scratch_floats(qh * 16);
    const bool ok = sc.score && sc.sz && sc.w && sc.row && sc.sum_q;
    if (!ok) oom = 1;
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < blocks; ++b) {
      if (!ok) continue;
      const int64_t t0 = b * kCodeBlock;
      const int64_t t1 = p.tokens - t0 < kCodeBlock ? p.tokens : t0 + kCodeBlock;
      code_block<S>(a, sc, t0, t1, partial + b * qh * stride, stride);
    }
    std::free(sc.score);
    std::free(sc.sz);
    std::free(sc.w);
    std::free(sc.row);
    std::free(sc.sum_q);
  }
  if (oom == 0) {
    float* merged = scratch_floats(qh * 2 * d);
    float* lsum = q + 6 * qh * d;
    if (!merged) {
      oom = 1;
    } else {
      merge_partials<S>(partial, blocks, qh, d, stride, 2, merged, lsum);
      for (int64_t h = 0; h < qh; ++h) {
        float* stored = merged + h * 2 * d;
        if (p.v.fwht_n > 0) fwht_row<S>(stored, d, p.v.fwht_n, p.v.fwht_scale);
        const typename S::V vl = S::set1(lsum[h]);
        for (int64_t c = 0; c < d; c += W) {
          const int m = d - c < W ? static_cast<int>(d - c) : W;
          const typename S::V o = S::add(S::load_n(stored + c, m, S::zero()),
                                         S::load_n(stored + d + c, m, S::zero()));
          S::store_n(out + h * d + c, S::div(o, vl), m);
        }
      }
      std::free(merged);
    }
  }
  std::free(partial);
  std::free(q);
  return oom == 0;
}

// docs/spec.md §7 decode attention: on the codes when the cache allows it, else on rebuilt rows.
template <class S>
bool attention_decode_kernel(const DecodeProblem& p, float* out) {
  if (code_problem(p)) return attention_codes_kernel<S>(p, out);
  return attention_rebuild_kernel<S>(p, out);
}

}  // namespace kvq::avx
