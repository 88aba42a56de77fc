// AVX-512 (F, BW, DQ, VL) + FMA + F16C traits for the kernel bodies shared with AVX2
// (backends/avx/kernel_table.h). Included only by backends/avx/avx512.cpp, which is compiled with
// -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma -mf16c. Every function is a static member of a
// struct in namespace kvq::avx512, so no symbol compiled for this ISA can be chosen by the linker
// for code that runs on a CPU without it.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "backends/avx/simd_scalar.h"

namespace kvq::avx512 {

struct Simd : kvq::avx::ScalarOps<Simd> {    // to_half, from_half, round_ne_scalar, fma_scalar
  static constexpr int W = 16;               // fp32 lanes per vector
  static constexpr int kRegVectors = 32;     // fwht blocks up to W * 32 values stay in registers
  static constexpr bool kFastGather = true;  // vgatherdps worth using for permutations
  using V = __m512;
  using VI = __m512i;

  static __mmask16 first(int n) { return static_cast<__mmask16>((1u << n) - 1u); }

  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  // Lanes >= n take `fill`.
  static V load_n(const float* p, int n, V fill) { return _mm512_mask_loadu_ps(fill, first(n), p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store_n(float* p, V v, int n) { _mm512_mask_storeu_ps(p, first(n), v); }

  // Exact widening (docs/spec.md §0); lanes >= n are 0.
  static V load_f16_n(const uint16_t* p, int n) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(first(n), p));
  }
  static V load_bf16_n(const uint16_t* p, int n) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(first(n), p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  static V gather_n(const float* base, const int32_t* idx, int n) {
    const __m512i i = _mm512_maskz_loadu_epi32(first(n), idx);
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), first(n), i, base, 4);
  }

  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }  // correctly rounded (docs/spec.md §0)
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V abs(V a) { return _mm512_abs_ps(a); }
  static V round_ne(V v) {
    return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  // r = rne(u) and d = u - r, both exact: one vreduceps (d, RNE, M = 0), then r = u - d.
  static V round_split(V u, V& d) {
    d = _mm512_reduce_ps(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_sub_ps(u, d);
  }
  static float reduce_min(V v) { return _mm512_reduce_min_ps(v); }
  static float reduce_max(V v) { return _mm512_reduce_max_ps(v); }
  // Sum of the lanes in a tree order (only for tolerance ops: attention_decode, docs/spec.md §7).
  static float reduce_add(V v) { return _mm512_reduce_add_ps(v); }

  // acc collects v - v, which is +0 for finite v and NaN for inf or NaN.
  static V nonfinite_acc(V acc, V v) { return _mm512_or_ps(acc, _mm512_sub_ps(v, v)); }
  static bool any_bits(V v) {
    const __m512i i = _mm512_castps_si512(v);
    return _mm512_test_epi32_mask(i, i) != 0;
  }
  // Lanes of v equal to 0 (either sign), as a bit mask.
  static unsigned zero_lanes(V v) { return _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_EQ_OQ); }
  static float lane(V v, int i) {
    alignas(64) float t[W];
    _mm512_store_ps(t, v);
    return t[i];
  }
  static V set_lane(V v, int i, float x) {
    return _mm512_mask_broadcastss_ps(v, static_cast<__mmask16>(1u << i), _mm_set_ss(x));
  }

  // In-register butterfly stage h < W of the FWHT (docs/spec.md §1): lane j of each 2h block gets
  // x[j] + x[j+h], lane j+h gets x[j] - x[j+h]; one add or subtract per output.
  template <int H>
  static V butterfly(V v) {
    V p;
    __mmask16 upper;
    if constexpr (H == 1) {
      p = _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1));
      upper = 0xAAAA;
    } else if constexpr (H == 2) {
      p = _mm512_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2));
      upper = 0xCCCC;
    } else if constexpr (H == 4) {
      p = _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1));
      upper = 0xF0F0;
    } else {
      static_assert(H == 8);
      p = _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2));
      upper = 0xFF00;
    }
    return _mm512_mask_sub_ps(_mm512_add_ps(v, p), upper, p, v);
  }

  // Vector fp16 round trip per lane: scale16/zero16 bits and their fp32 values.
  static VI to_half_bits(V v) {
    return _mm512_cvtepu16_epi32(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static V from_half_bits(VI h) { return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h)); }
  static void store_half_bits_n(uint16_t* p, VI h, int n) {
    _mm512_mask_cvtepi32_storeu_epi16(p, first(n), h);
  }
  // Lanes whose fp16 bits are inf or NaN.
  static unsigned half_nonfinite_lanes(VI h) {
    const __m512i e = _mm512_and_si512(h, _mm512_set1_epi32(0x7C00));
    return _mm512_cmpeq_epi32_mask(e, _mm512_set1_epi32(0x7C00));
  }

  // Codes: an integral float in [0, 2^b - 1] per lane, converted exactly.
  static VI to_int(V v) { return _mm512_cvttps_epi32(v); }
  static VI zero_masked(VI v, int n) { return _mm512_maskz_mov_epi32(first(n), v); }
  static VI seti(int32_t x) { return _mm512_set1_epi32(x); }
  static VI lane_shifts(int bits) {  // lane i (mod 8) -> i * bits
    const __m512i i = _mm512_set_epi32(7, 6, 5, 4, 3, 2, 1, 0, 7, 6, 5, 4, 3, 2, 1, 0);
    return _mm512_mullo_epi32(i, _mm512_set1_epi32(bits));
  }
  static V code_to_float(VI q) { return _mm512_cvtepi32_ps(q); }
  static VI subi(VI a, VI b) { return _mm512_sub_epi32(a, b); }
  static VI ori(VI a, VI b) { return _mm512_or_si512(a, b); }
  static VI andi(VI a, VI b) { return _mm512_and_si512(a, b); }
  static VI shl(VI v, int s) { return _mm512_sll_epi32(v, _mm_cvtsi32_si128(s)); }
  static VI shr(VI v, int s) { return _mm512_srl_epi32(v, _mm_cvtsi32_si128(s)); }
  static VI select_i(unsigned lanes, VI a, VI b) {  // lanes set -> a, others b
    return _mm512_mask_mov_epi32(b, static_cast<__mmask16>(lanes), a);
  }
  static V select(unsigned lanes, V a, V b) {
    return _mm512_mask_mov_ps(b, static_cast<__mmask16>(lanes), a);
  }
  static unsigned eq_lanes(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static unsigned le_lanes(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
  static unsigned gt_lanes(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static void store_i(int32_t* p, VI v) { _mm512_storeu_si512(p, v); }
  static VI load_i(const int32_t* p) { return _mm512_loadu_si512(p); }
  static VI iota() {
    return _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  }
  static VI addi(VI a, VI b) { return _mm512_add_epi32(a, b); }
  static V as_float(VI v) { return _mm512_castsi512_ps(v); }  // reinterpret the bits

  // Packs W codes of `bits` <= 4 bits (lane shifts from lane_shifts) into a little-endian
  // bitstream of W * bits bits: lanes 0-7 fill 8*bits bits, lanes 8-15 the next 8*bits.
  static uint64_t pack(VI codes, VI shifts, int bits) {
    __m512i s = _mm512_sllv_epi32(codes, shifts);
    s = _mm512_or_si512(s, _mm512_shuffle_i32x4(s, s, _MM_SHUFFLE(2, 3, 0, 1)));
    s = _mm512_or_si512(s, _mm512_shuffle_epi32(s, _MM_PERM_BADC));
    s = _mm512_or_si512(s, _mm512_shuffle_epi32(s, _MM_PERM_CDAB));
    const auto lo = static_cast<uint32_t>(_mm_cvtsi128_si32(_mm512_castsi512_si128(s)));
    const auto hi = static_cast<uint32_t>(_mm_cvtsi128_si32(_mm512_extracti32x4_epi32(s, 2)));
    return static_cast<uint64_t>(lo) | (static_cast<uint64_t>(hi) << (8 * bits));
  }
  // Block packers: vectors per block for b bits (0 = none), and the packer writing
  // pack_vectors * 16 * b / 8 bytes. Codes narrow to bytes, then multiply-add merges neighbours:
  // b = 2: byte j = c[4j] + 4 c[4j+1] + 16 c[4j+2] + 64 c[4j+3]; b = 4: c[2j] + 16 c[2j+1].
  template <int B>
  static constexpr int pack_vectors() {
    return B == 1 ? 1 : B == 2 ? 4 : B == 4 ? 2 : 0;
  }
  template <int B>
  static void pack_block(const VI* q, uint8_t* out) {
    if constexpr (B == 1) {
      const uint16_t bits = _mm512_test_epi32_mask(q[0], q[0]);
      std::memcpy(out, &bits, 2);
    } else if constexpr (B == 2) {
      __m512i b = _mm512_castsi128_si512(_mm512_cvtepi32_epi8(q[0]));
      b = _mm512_inserti32x4(b, _mm512_cvtepi32_epi8(q[1]), 1);
      b = _mm512_inserti32x4(b, _mm512_cvtepi32_epi8(q[2]), 2);
      b = _mm512_inserti32x4(b, _mm512_cvtepi32_epi8(q[3]), 3);
      const __m512i w = _mm512_maddubs_epi16(b, _mm512_set1_epi16(0x0401));
      const __m512i d = _mm512_madd_epi16(w, _mm512_set1_epi32(0x00100001));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm512_cvtepi32_epi8(d));
    } else {
      static_assert(B == 4);
      const __m256i b = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm512_cvtepi32_epi8(q[0])),
                                                _mm512_cvtepi32_epi8(q[1]), 1);
      const __m256i w = _mm256_maddubs_epi16(b, _mm256_set1_epi16(0x1001));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_cvtepi16_epi8(w));
    }
  }
  // 8-bit codes: one byte each; writes n bytes.
  static void store_bytes_n(uint8_t* out, VI codes, int n) {
    _mm512_mask_cvtepi32_storeu_epi8(out, first(n), codes);
  }
  // Inverse of pack: W codes from the stream bits (bits <= 4).
  static VI unpack(uint64_t stream, VI shifts, int bits) {
    const auto lo = static_cast<int32_t>(stream & ((uint64_t{1} << (8 * bits)) - 1));
    const auto hi = static_cast<int32_t>(stream >> (8 * bits));
    const __m512i v =
        _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(lo)), _mm256_set1_epi32(hi), 1);
    return _mm512_and_si512(_mm512_srlv_epi32(v, shifts), _mm512_set1_epi32((1 << bits) - 1));
  }
  static VI load_bytes_n(const uint8_t* in, int n) {
    return _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(first(n), in));
  }

  // ---- Code primitives of attention_codes.h (decode attention on packed codes) --------------
  // Dwords at base + off[l] (byte offsets), one per lane.
  static VI gather_u32(const uint8_t* base, VI off) { return _mm512_i32gather_epi32(off, base, 1); }
  // Unsigned lanes to float (masked code fields, exact: at most 8 significant bits).
  static V cvt_u32(VI v) { return _mm512_cvtepu32_ps(v); }
  static V cvt_top(VI v) { return _mm512_cvtepu32_ps(v); }  // a field that ends at bit 31
  // P = W * bits bits from p, repeated so that every dword lane sees the 32-bit word it reads
  // (P < 32: the unit repeats inside each dword; P >= 32: dword r of the unit at lane r mod P/32).
  template <int P>
  static VI bcast_bits(const uint8_t* p) {
    if constexpr (P == 16) {
      uint16_t w;
      std::memcpy(&w, p, 2);
      return _mm512_set1_epi16(static_cast<short>(w));
    } else if constexpr (P == 32) {
      uint32_t w;
      std::memcpy(&w, p, 4);
      return _mm512_set1_epi32(static_cast<int>(w));
    } else if constexpr (P == 64) {
      uint64_t w;
      std::memcpy(&w, p, 8);
      return _mm512_set1_epi64(static_cast<long long>(w));
    } else {
      static_assert(P == 128);
      return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
  }

  // ---- Token-block (channel-major) primitives of rotate_quantize.h ----------------------------
  // A block holds W tokens channel-major: vector c = channel c of tokens 0..W-1 (lane l = token l).
  static constexpr unsigned kAllLanes = 0xFFFFu;
  static constexpr int kStageCols = 32;   // channels per stage_u16 call
  static constexpr int kSoaRadixLog = 4;  // FWHT stages per register pass (16 vectors + temps)

  // Transposes 32 channels of W rows (16-bit values, row stride `stride` elements) in registers:
  // unpacks of 16-, 32- and 64-bit units within each 128-bit lane (rows 0-7 and 8-15
  // separately), then a two-source qword permute joins the two row halves of a channel. Result:
  // t[c] holds channels c (low 256 bits) and 8 + c (high), t[8 + c] channels 16 + c and 24 + c,
  // for c < 8; lane l of a channel = row l.
  __attribute__((always_inline)) static void transpose_u16(const uint16_t* src, int64_t stride,
                                                           __m512i (&t)[16]) {
    __m512i r[16], a[16], b[16];
    for (int l = 0; l < 16; ++l) r[l] = _mm512_loadu_si512(src + l * stride);
    for (int p = 0; p < 8;
         ++p) {  // a[2p]: rows 2p, 2p+1 of channels 0-3 of each lane; a[2p+1]: 4-7
      a[2 * p] = _mm512_unpacklo_epi16(r[2 * p], r[2 * p + 1]);
      a[2 * p + 1] = _mm512_unpackhi_epi16(r[2 * p], r[2 * p + 1]);
    }
    for (int p = 0; p < 4; ++p) {  // b[4p + q]: rows 4p..4p+3 of channels 2q, 2q+1 of each lane
      b[4 * p + 0] = _mm512_unpacklo_epi32(a[4 * p], a[4 * p + 2]);
      b[4 * p + 1] = _mm512_unpackhi_epi32(a[4 * p], a[4 * p + 2]);
      b[4 * p + 2] = _mm512_unpacklo_epi32(a[4 * p + 1], a[4 * p + 3]);
      b[4 * p + 3] = _mm512_unpackhi_epi32(a[4 * p + 1], a[4 * p + 3]);
    }
    const __m512i lo = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    const __m512i hi = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    for (int c = 0; c < 8; ++c) {
      // Channel 8L + c of each 128-bit lane L, rows 0-7 (x) and rows 8-15 (y).
      const __m512i x = (c & 1) ? _mm512_unpackhi_epi64(b[c / 2], b[4 + c / 2])
                                : _mm512_unpacklo_epi64(b[c / 2], b[4 + c / 2]);
      const __m512i y = (c & 1) ? _mm512_unpackhi_epi64(b[8 + c / 2], b[12 + c / 2])
                                : _mm512_unpacklo_epi64(b[8 + c / 2], b[12 + c / 2]);
      t[c] = _mm512_permutex2var_epi64(x, lo, y);      // channels c, 8 + c
      t[8 + c] = _mm512_permutex2var_epi64(x, hi, y);  // channels 16 + c, 24 + c
    }
  }
  // The transpose stored: channel c of the 32 to dst[c * W + l].
  static void stage_u16(const uint16_t* src, int64_t stride, uint16_t* dst) {
    __m512i t[16];
    transpose_u16(src, stride, t);
    for (int c = 0; c < 8; ++c)
      for (int h = 0; h < 4; ++h)  // channel 8h + c
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (8 * h + c) * 16),
                            h & 1 ? _mm512_extracti64x4_epi64(t[c + 8 * (h >> 1)], 1)
                                  : _mm512_castsi512_si256(t[c + 8 * (h >> 1)]));
  }
  // The transpose of 32 fp16 channels widened (exactly) and handed to group(h, r) as four
  // groups of 8 consecutive channels, r[j] = channel 8h + j: the first FWHT pass of 3 stages
  // runs on them in registers, without the staged copy (rotate_quantize.h).
  static constexpr bool kStageGroups8 = true;
  template <class Group>
  __attribute__((always_inline)) static void stage_f16_groups8(const uint16_t* src, int64_t stride, Group&& group) {
    __m512i t[16];
    transpose_u16(src, stride, t);
#pragma GCC unroll 4
    for (int h = 0; h < 4; ++h) {
      V r[8];
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {
        const __m512i u = t[j + 8 * (h >> 1)];
        r[j] = _mm512_cvtph_ps(h & 1 ? _mm512_extracti64x4_epi64(u, 1) : _mm512_castsi512_si256(u));
      }
      group(h, r);
    }
  }
  // Transposes W channels of W fp32 rows (row stride `stride`) into dst[c * W + l].
  static void stage_f32(const float* src, int64_t stride, float* dst) {
    __m512 r[16], t[16], u[16], v[16];
    for (int l = 0; l < 16; ++l) r[l] = _mm512_loadu_ps(src + l * stride);
    for (int p = 0; p < 8; ++p) {
      t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
      t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
    }
    for (int p = 0; p < 4; ++p) {  // u[4p + k] lane L: rows 4p..4p+3 of channel 4L + k
      u[4 * p + 0] = _mm512_shuffle_ps(t[4 * p], t[4 * p + 2], 0x44);
      u[4 * p + 1] = _mm512_shuffle_ps(t[4 * p], t[4 * p + 2], 0xEE);
      u[4 * p + 2] = _mm512_shuffle_ps(t[4 * p + 1], t[4 * p + 3], 0x44);
      u[4 * p + 3] = _mm512_shuffle_ps(t[4 * p + 1], t[4 * p + 3], 0xEE);
    }
    for (int k = 0; k < 4; ++k) {  // lanes of v[k]: rows 0-3 ch k, 0-3 ch 8+k, 4-7 ch k, 4-7 ch 8+k
      v[k] = _mm512_shuffle_f32x4(u[k], u[4 + k], 0x88);
      v[4 + k] = _mm512_shuffle_f32x4(u[k], u[4 + k], 0xDD);
      v[8 + k] = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0x88);
      v[12 + k] = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0xDD);
    }
    for (int k = 0; k < 4; ++k) {
      _mm512_storeu_ps(dst + k * 16, _mm512_shuffle_f32x4(v[k], v[8 + k], 0x88));
      _mm512_storeu_ps(dst + (8 + k) * 16, _mm512_shuffle_f32x4(v[k], v[8 + k], 0xDD));
      _mm512_storeu_ps(dst + (4 + k) * 16, _mm512_shuffle_f32x4(v[4 + k], v[12 + k], 0x88));
      _mm512_storeu_ps(dst + (12 + k) * 16, _mm512_shuffle_f32x4(v[4 + k], v[12 + k], 0xDD));
    }
  }
  // W staged 16-bit values widened exactly (docs/spec.md §0).
  static V load_f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static V load_bf16(const uint16_t* p) {
    const __m512i w =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  static V neg(V v) { return _mm512_xor_ps(v, _mm512_set1_ps(-0.0f)); }  // exact sign flip
  // max(m, |d|) for m >= 0 in one vrangeps: imm 0b1011 = larger magnitude, sign cleared.
  static V max_abs(V m, V d) { return _mm512_range_ps(m, d, 0x0B); }
  static unsigned sign_lanes(VI v) { return _mm512_movepi32_mask(v); }
  static VI shl16(VI v) { return _mm512_slli_epi32(v, 16); }
  // Word k < count of lane l goes to out + l * stride + 4 * k (count <= 8): 32-bit unpacks give
  // each 128-bit lane's 4 tokens words 0-3 (P) and 4-7 (Q); a qword permute joins P and Q.
  static void store_words(const VI* w, int count, uint8_t* out, int64_t stride) {
    __m512i in[8], t[8];
    for (int k = 0; k < 8; ++k) in[k] = k < count ? w[k] : _mm512_setzero_si512();
    for (int p = 0; p < 4; ++p) {
      t[2 * p] = _mm512_unpacklo_epi32(in[2 * p], in[2 * p + 1]);
      t[2 * p + 1] = _mm512_unpackhi_epi32(in[2 * p], in[2 * p + 1]);
    }
    const __m512i lo = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    const __m512i hi = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    const __mmask8 m = static_cast<__mmask8>((1u << count) - 1u);
    for (int j = 0; j < 4; ++j) {  // token 4L + j of lane L
      const __m512i& ta = t[j >> 1];
      const __m512i& tb = t[2 + (j >> 1)];
      const __m512i& tc = t[4 + (j >> 1)];
      const __m512i& td = t[6 + (j >> 1)];
      const __m512i p = (j & 1) ? _mm512_unpackhi_epi64(ta, tb) : _mm512_unpacklo_epi64(ta, tb);
      const __m512i q = (j & 1) ? _mm512_unpackhi_epi64(tc, td) : _mm512_unpacklo_epi64(tc, td);
      const __m512i r01 = _mm512_permutex2var_epi64(p, lo, q);  // tokens j, 4 + j
      const __m512i r23 = _mm512_permutex2var_epi64(p, hi, q);  // tokens 8 + j, 12 + j
      const __m256i rows[4] = {_mm512_castsi512_si256(r01), _mm512_extracti64x4_epi64(r01, 1),
                               _mm512_castsi512_si256(r23), _mm512_extracti64x4_epi64(r23, 1)};
      for (int h = 0; h < 4; ++h) {
        uint8_t* o = out + (4 * h + j) * stride;
        if (count == 8)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), rows[h]);
        else
          _mm256_mask_storeu_epi32(o, m, rows[h]);
      }
    }
  }
};

}  // namespace kvq::avx512
