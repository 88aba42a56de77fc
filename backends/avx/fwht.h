// SIMD twin of reference/fwht.cpp (docs/spec.md §1), templated on the ISA traits S
// (simd_avx512.h / simd_avx2.h) and instantiated in avx512.cpp and avx2.cpp.
//
// Stages h < W are lane shuffles inside one vector (S::butterfly<h>), stages W <= h < W *
// kRegVectors run on a block held in registers, larger stages are radix-2 passes over the block
// in L1. Every output is still produced by one add or subtract per butterfly in ascending h, so
// the result equals the reference bit for bit (docs/spec.md §1: only the stage order matters). The
// normalizing multiply is fused into the last stage's store: same single rounding.
// Bytes moved: 4 read + 4 written per element; compute log2(n) adds per element.
#pragma once

#include <cstdint>

namespace kvq::avx {

template <class S>
inline typename S::V fwht_lane_stages(typename S::V v, int n) {  // stages h < min(n, W)
  if (n > 1) v = S::template butterfly<1>(v);
  if (n > 2) v = S::template butterfly<2>(v);
  if (n > 4) v = S::template butterfly<4>(v);
  if constexpr (S::W == 16) {
    if (n > 8) v = S::template butterfly<8>(v);
  }
  return v;
}

// The butterflies between whole vectors r[0..N): stages hv = 1, 2, ..., N/2 in ascending order,
// one add and one subtract per pair (docs/spec.md §1), all in registers.
template <class S, int N>
__attribute__((always_inline)) inline void fwht_vector_stages(typename S::V (&r)[N]) {
#pragma GCC unroll 8
  for (int hv = 1; hv < N; hv *= 2) {
#pragma GCC unroll 32
    for (int j = 0; j < N; ++j) {
      if (j & hv) continue;
      const typename S::V a = r[j];
      const typename S::V b = r[j + hv];
      r[j] = S::add(a, b);
      r[j + hv] = S::sub(a, b);
    }
  }
}

// All stages h < NV * W of one block of NV vectors, in registers; scaled when `last`.
template <class S, int NV>
inline void fwht_register_block(float* x, bool last, typename S::V s) {
  using V = typename S::V;
  V r[NV];
#pragma GCC unroll 32
  for (int i = 0; i < NV; ++i) r[i] = fwht_lane_stages<S>(S::load(x + i * S::W), S::W);
  fwht_vector_stages<S>(r);
#pragma GCC unroll 32
  for (int i = 0; i < NV; ++i) S::store(x + i * S::W, last ? S::mul(r[i], s) : r[i]);
}

template <class S>
inline void fwht_register_blocks(float* x, int n, int block, typename S::V s) {
  const bool last = block == n;
  const int nv = block / S::W;
  for (int off = 0; off < n; off += block) {
    float* b = x + off;
    switch (nv) {
      case 1: fwht_register_block<S, 1>(b, last, s); break;
      case 2: fwht_register_block<S, 2>(b, last, s); break;
      case 4: fwht_register_block<S, 4>(b, last, s); break;
      case 8: fwht_register_block<S, 8>(b, last, s); break;
      case 16: fwht_register_block<S, 16>(b, last, s); break;
      default:
        if constexpr (S::kRegVectors >= 32) fwht_register_block<S, 32>(b, last, s);
        break;
    }
  }
}

// One block of n >= W values in place.
template <class S>
inline void fwht_block(float* x, int n, float scale) {
  using V = typename S::V;
  const V s = S::set1(scale);
  const int block = n < S::W * S::kRegVectors ? n : S::W * S::kRegVectors;
  fwht_register_blocks<S>(x, n, block, s);
  for (int h = block; h < n; h *= 2) {
    const bool last = 2 * h == n;
    for (int i = 0; i < n; i += 2 * h)
      for (int j = i; j < i + h; j += S::W) {
        const V a = S::load(x + j);
        const V b = S::load(x + j + h);
        const V sum = S::add(a, b);
        const V dif = S::sub(a, b);
        S::store(x + j, last ? S::mul(sum, s) : sum);
        S::store(x + j + h, last ? S::mul(dif, s) : dif);
      }
  }
}

// count values (a multiple of n < W) in place: each vector holds W / n whole blocks.
template <class S>
inline void fwht_small(float* x, int64_t count, int n, float scale) {
  const typename S::V s = S::set1(scale);
  for (int64_t k = 0; k < count; k += S::W) {
    const int m = count - k < S::W ? static_cast<int>(count - k) : S::W;
    typename S::V v = S::load_n(x + k, m, S::zero());
    v = S::mul(fwht_lane_stages<S>(v, n), s);
    S::store_n(x + k, v, m);
  }
}

// Every block of n values of one row of `count` values (count a multiple of n).
template <class S>
inline void fwht_row(float* x, int64_t count, int n, float scale) {
  if (n < S::W) {
    fwht_small<S>(x, count, n, scale);
    return;
  }
  for (int64_t off = 0; off < count; off += n) fwht_block<S>(x + off, n, scale);
}

template <class S>
void fwht_kernel(float* x, int64_t blocks, int n, float scale) {
  // Blocks are independent, so the result does not depend on the thread count; small n is
  // processed in chunks of whole blocks per thread.
  const int64_t per = n < S::W ? 1024 / n : 1;  // blocks per work item
  const int64_t items = (blocks + per - 1) / per;
#pragma omp parallel for schedule(static) if (blocks * n > 65536)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t b0 = it * per;
    const int64_t nb = blocks - b0 < per ? blocks - b0 : per;
    fwht_row<S>(x + b0 * n, nb * n, n, scale);
  }
}

// ---- Token blocks (rotate_quantize.h): W tokens channel-major, vector c = channel c ------------
//
// Here a butterfly is one vector add or subtract between two channels' vectors, lane by lane, so
// no stage needs a shuffle and tokens never mix; stages still run in ascending h with one add or
// subtract per output, so every lane equals the reference bit for bit (docs/spec.md §1). The stages
// go in passes of K <= S::kSoaRadixLog consecutive stages held in registers: a pass covering stages
// h0, 2 h0, ..., 2^(K-1) h0 loads the 2^K vectors i + j * h0 (i in a block of n, i mod (2^K h0) <
// h0), runs its K stages and stores them. load(i, j, q) and store(i, j, q, v) address vector
// i + j * h0; q = begin + (number of vectors the pass visited before this group), so q + j numbers
// the vectors of [begin, begin + n) in the order the pass stores them (see fwht_soa_visit).
// load and store are small lambdas taken by value: their captures are then locals of this
// function that stay in registers (vector stores may alias anything, so captures reached through
// a reference would be reloaded after every store).
template <class S, int K, class Load, class Store>
inline void fwht_soa_pass(int64_t begin, int n, int64_t h0, Load load, Store store) {
  using V = typename S::V;
  constexpr int R = 1 << K;
  int64_t q = begin;
  auto butterflies = [&](int64_t i) __attribute__((always_inline)) {
    V r[R];
#pragma GCC unroll 16
    for (int j = 0; j < R; ++j) r[j] = load(i, j, q);
    fwht_vector_stages<S>(r);
#pragma GCC unroll 16
    for (int j = 0; j < R; ++j) store(i, j, q, r[j]);
    q += R;
  };
  if (h0 == 1) {  // the first pass: consecutive groups of R vectors
    for (int64_t i = begin; i < begin + n; i += R) butterflies(i);
    return;
  }
  for (int64_t base = begin; base < begin + n; base += h0 * R)
    for (int64_t i = base; i < base + h0; ++i) butterflies(i);
}

// The vectors of [begin, begin + n) in the order fwht_soa_pass stores them: visit(q, c) for
// q = begin, begin + 1, ...
template <class Visit>
inline void fwht_soa_visit(int K, int64_t begin, int n, int64_t h0, Visit&& visit) {
  const int R = 1 << K;
  int64_t q = begin;
  for (int64_t base = begin; base < begin + n; base += h0 * R)
    for (int64_t i = base; i < base + h0; ++i)
      for (int j = 0; j < R; ++j) visit(q++, i + j * h0);
}

// The pass of K (runtime, 0 <= K <= S::kSoaRadixLog) stages.
template <class S, class Load, class Store>
inline void fwht_soa_pass_k(int K, int64_t begin, int n, int64_t h0, Load load, Store store) {
  switch (K) {
    case 0: fwht_soa_pass<S, 0>(begin, n, h0, load, store); break;
    case 1: fwht_soa_pass<S, 1>(begin, n, h0, load, store); break;
    case 2: fwht_soa_pass<S, 2>(begin, n, h0, load, store); break;
    case 3: fwht_soa_pass<S, 3>(begin, n, h0, load, store); break;
    default:
      if constexpr (S::kSoaRadixLog >= 4) fwht_soa_pass<S, 4>(begin, n, h0, load, store);
      break;
  }
}

// How the log2(n) stages of one fwht block split into passes: at most S::kSoaRadixLog stages
// each, as even as possible (n = 512: 3 + 3 + 3). n == 1 and "no fwht" are one pass of 0 stages
// (the scaling multiply, or a multiply by 1, which is exact, and the permuted store).
struct SoaPasses {
  int count = 1;
  int k[16] = {};
  int64_t h0[16] = {};
};

template <class S>
inline SoaPasses soa_passes(int n) {
  int m = 0;
  while (n > 1 && (int64_t{1} << m) < n) ++m;
  SoaPasses p;
  p.count = m == 0 ? 1 : (m + S::kSoaRadixLog - 1) / S::kSoaRadixLog;
  int64_t h = 1;
  for (int i = 0; i < p.count; ++i) {
    p.k[i] = m / p.count + (i < m % p.count ? 1 : 0);
    p.h0[i] = h;
    h <<= p.k[i];
  }
  return p;
}

}  // namespace kvq::avx
