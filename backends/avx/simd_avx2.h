// AVX2 + FMA + F16C traits for the kernel bodies shared with AVX-512
// (backends/avx/kernel_table.h). Included only by backends/avx/avx2.cpp, compiled with -mavx2
// -mfma -mf16c. Same member names and meaning as kvq::avx512::Simd; lane masks are plain bit
// masks (bit i = lane i).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "backends/avx/simd_scalar.h"

namespace kvq::avx2 {

struct Simd : kvq::avx::ScalarOps<Simd> {  // to_half, from_half, round_ne_scalar, fma_scalar
  static constexpr int W = 8;
  static constexpr int kRegVectors = 16;
  static constexpr bool kFastGather = false;  // vgatherdps worth using for permutations
  using V = __m256;
  using VI = __m256i;

  static __m256i first_mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0));
  }
  static __m256i lanes_mask(unsigned lanes) {
    const __m256i bit = _mm256_set_epi32(128, 64, 32, 16, 8, 4, 2, 1);
    const __m256i l = _mm256_set1_epi32(static_cast<int>(lanes));
    return _mm256_cmpeq_epi32(_mm256_and_si256(l, bit), bit);
  }

  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  // Masked moves are slow on some AVX2 CPUs (vmaskmovps stores are microcoded on AMD Zen 1/2),
  // so whole vectors take the plain instruction.
  static V load_n(const float* p, int n, V fill) {
    if (n >= W) return _mm256_loadu_ps(p);
    const __m256i m = first_mask(n);
    return _mm256_blendv_ps(fill, _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
  }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store_n(float* p, V v, int n) {
    if (n >= W) {
      _mm256_storeu_ps(p, v);
      return;
    }
    alignas(32) float t[W];
    _mm256_store_ps(t, v);
    std::memcpy(p, t, static_cast<size_t>(n) * sizeof(float));
  }

  static __m128i load_u16_n(const uint16_t* p, int n) {
    if (n >= W) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    alignas(16) uint16_t t[W] = {};
    std::memcpy(t, p, static_cast<size_t>(n) * sizeof(uint16_t));
    return _mm_load_si128(reinterpret_cast<const __m128i*>(t));
  }
  static V load_f16_n(const uint16_t* p, int n) { return _mm256_cvtph_ps(load_u16_n(p, n)); }
  static V load_bf16_n(const uint16_t* p, int n) {
    const __m256i w = _mm256_cvtepu16_epi32(load_u16_n(p, n));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static V gather_n(const float* base, const int32_t* idx, int n) {
    if (n >= W)
      return _mm256_i32gather_ps(base, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx)),
                                 4);
    const __m256i m = first_mask(n);
    const __m256i i = _mm256_maskload_epi32(idx, m);
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), base, i, _mm256_castsi256_ps(m), 4);
  }

  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }  // correctly rounded (docs/spec.md §0)
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V abs(V a) { return _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF))); }
  static V round_ne(V v) {
    return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  // r = rne(u) and d = u - r (exact).
  static V round_split(V u, V& d) {
    const V r = round_ne(u);
    d = _mm256_sub_ps(u, r);
    return r;
  }
  static float reduce_min(V v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  static float reduce_max(V v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  // Sum of the lanes in a tree order (only for tolerance ops: attention_decode, docs/spec.md §7).
  static float reduce_add(V v) {
    __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }

  static V nonfinite_acc(V acc, V v) { return _mm256_or_ps(acc, _mm256_sub_ps(v, v)); }
  static bool any_bits(V v) {
    const __m256i i = _mm256_castps_si256(v);
    return !_mm256_testz_si256(i, i);
  }
  static unsigned zero_lanes(V v) {
    return static_cast<unsigned>(
        _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_EQ_OQ)));
  }
  static float lane(V v, int i) {
    alignas(32) float t[W];
    _mm256_store_ps(t, v);
    return t[i];
  }
  static V set_lane(V v, int i, float x) {
    alignas(32) float t[W];
    _mm256_store_ps(t, v);
    t[i] = x;
    return _mm256_load_ps(t);
  }

  // In-register butterfly stage h < W (docs/spec.md §1), as in the AVX-512 traits.
  template <int H>
  static V butterfly(V v) {
    if constexpr (H == 1) {
      const V p = _mm256_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1));
      return _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xAA);
    } else if constexpr (H == 2) {
      const V p = _mm256_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2));
      return _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xCC);
    } else {
      static_assert(H == 4);
      const V p = _mm256_permute2f128_ps(v, v, 1);
      return _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xF0);
    }
  }

  static VI to_half_bits(V v) {
    return _mm256_cvtepu16_epi32(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static V from_half_bits(VI h) {
    const __m128i p = _mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    return _mm256_cvtph_ps(p);
  }
  static void store_half_bits_n(uint16_t* p, VI h, int n) {
    alignas(16) uint16_t t[W];
    _mm_store_si128(reinterpret_cast<__m128i*>(t),
                    _mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)));
    std::memcpy(p, t, static_cast<size_t>(n) * sizeof(uint16_t));
  }
  static unsigned half_nonfinite_lanes(VI h) {
    const __m256i e = _mm256_and_si256(h, _mm256_set1_epi32(0x7C00));
    return static_cast<unsigned>(
        _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(e, _mm256_set1_epi32(0x7C00)))));
  }

  static VI to_int(V v) { return _mm256_cvttps_epi32(v); }
  static VI zero_masked(VI v, int n) { return _mm256_and_si256(v, first_mask(n)); }
  static VI seti(int32_t x) { return _mm256_set1_epi32(x); }
  static VI lane_shifts(int bits) {
    return _mm256_mullo_epi32(_mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0), _mm256_set1_epi32(bits));
  }
  static V code_to_float(VI q) { return _mm256_cvtepi32_ps(q); }
  static VI subi(VI a, VI b) { return _mm256_sub_epi32(a, b); }
  static VI ori(VI a, VI b) { return _mm256_or_si256(a, b); }
  static VI andi(VI a, VI b) { return _mm256_and_si256(a, b); }
  static VI shl(VI v, int s) { return _mm256_sll_epi32(v, _mm_cvtsi32_si128(s)); }
  static VI shr(VI v, int s) { return _mm256_srl_epi32(v, _mm_cvtsi32_si128(s)); }
  static VI select_i(unsigned lanes, VI a, VI b) {
    return _mm256_blendv_epi8(b, a, lanes_mask(lanes));
  }
  static V select(unsigned lanes, V a, V b) {
    return _mm256_blendv_ps(b, a, _mm256_castsi256_ps(lanes_mask(lanes)));
  }
  static unsigned eq_lanes(V a, V b) {
    return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_EQ_OQ)));
  }
  static unsigned le_lanes(V a, V b) {
    return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_LE_OQ)));
  }
  static unsigned gt_lanes(V a, V b) {
    return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ)));
  }
  static void store_i(int32_t* p, VI v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static VI load_i(const int32_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static VI iota() { return _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0); }
  static V as_float(VI v) { return _mm256_castsi256_ps(v); }  // reinterpret the bits
  static VI addi(VI a, VI b) { return _mm256_add_epi32(a, b); }

  // W = 8 codes of bits <= 4 into 8 * bits stream bits (lane i at bit i * bits).
  static uint64_t pack(VI codes, VI shifts, int) {
    __m256i s = _mm256_sllv_epi32(codes, shifts);
    s = _mm256_or_si256(s, _mm256_permute2x128_si256(s, s, 1));
    s = _mm256_or_si256(s, _mm256_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm256_or_si256(s, _mm256_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return static_cast<uint32_t>(_mm_cvtsi128_si32(_mm256_castsi256_si128(s)));
  }
  // Block packers (see simd_avx512.h): vectors per block for b bits (0 = none) and the packer
  // writing pack_vectors * 8 * b / 8 bytes. 1 bit: a sign-bit movemask. 2 and 4 bits: codes
  // narrow to bytes (packus, then a dword permute restores code order across the two 128-bit
  // lanes), then multiply-adds merge neighbours as in the AVX-512 packer.
  template <int B>
  static constexpr int pack_vectors() {
    return B == 1 ? 1 : B == 2 ? 4 : B == 4 ? 2 : 0;
  }
  template <int B>
  static void pack_block(const VI* q, uint8_t* out) {
    if constexpr (B == 1) {
      *out = static_cast<uint8_t>(
          _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(q[0], 31))));
    } else if constexpr (B == 2) {
      // packus: lane 0 holds codes 0-3 of q[0..3], lane 1 codes 4-7; dwords [0,4,1,5,2,6,3,7]
      // put codes 0..31 in order.
      __m256i b =
          _mm256_packus_epi16(_mm256_packus_epi32(q[0], q[1]), _mm256_packus_epi32(q[2], q[3]));
      b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      const __m256i w = _mm256_maddubs_epi16(b, _mm256_set1_epi16(0x0401));   // c0 + 4 c1
      const __m256i d = _mm256_madd_epi16(w, _mm256_set1_epi32(0x00100001));  // + 16 (c2 + 4 c3)
      const __m256i p = _mm256_packus_epi16(_mm256_packus_epi32(d, d), _mm256_setzero_si256());
      const auto lo = static_cast<uint32_t>(_mm_cvtsi128_si32(_mm256_castsi256_si128(p)));
      const auto hi = static_cast<uint32_t>(_mm256_extract_epi32(p, 4));
      const uint64_t bytes = static_cast<uint64_t>(lo) | (static_cast<uint64_t>(hi) << 32);
      std::memcpy(out, &bytes, 8);
    } else {
      static_assert(B == 4);
      const __m256i w = _mm256_packus_epi32(q[0], q[1]);
      const __m256i b = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(w, w),
                                                    _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5));
      const __m128i m =
          _mm_maddubs_epi16(_mm256_castsi256_si128(b), _mm_set1_epi16(0x1001));  // c0 + 16 c1
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packus_epi16(m, m));
    }
  }
  static void store_bytes_n(uint8_t* out, VI codes, int n) {
    const __m256i w = _mm256_packus_epi32(codes, codes);  // c0-3 c0-3 | c4-7 c4-7 (16-bit)
    const __m256i b = _mm256_packus_epi16(w, w);          // bytes 0-3: c0-3, 16-19: c4-7
    const auto lo = static_cast<uint32_t>(_mm_cvtsi128_si32(_mm256_castsi256_si128(b)));
    const auto hi = static_cast<uint32_t>(_mm256_extract_epi32(b, 4));
    const uint64_t bytes = static_cast<uint64_t>(lo) | (static_cast<uint64_t>(hi) << 32);
    if (n == W)
      std::memcpy(out, &bytes, W);
    else
      std::memcpy(out, &bytes, static_cast<size_t>(n));
  }
  static VI unpack(uint64_t stream, VI shifts, int bits) {
    const __m256i v = _mm256_set1_epi32(static_cast<int32_t>(stream));
    return _mm256_and_si256(_mm256_srlv_epi32(v, shifts), _mm256_set1_epi32((1 << bits) - 1));
  }
  static VI load_bytes_n(const uint8_t* in, int n) {
    uint64_t bytes = 0;
    std::memcpy(&bytes, in, static_cast<size_t>(n));
    return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<int64_t>(bytes)));
  }

  // ---- Token-block (channel-major) primitives of rotate_quantize.h ----------------------------
  // A block holds W tokens channel-major: vector c = channel c of tokens 0..W-1 (lane l = token l).
  static constexpr unsigned kAllLanes = 0xFFu;
  static constexpr int kStageCols = 16;   // channels per stage_u16 call
  static constexpr bool kStageGroups8 = false;  // no stage_f16_groups8 (simd_avx512.h)
  static constexpr int kSoaRadixLog = 3;  // FWHT stages per register pass (8 vectors + temps)

  // Transposes 16 channels of W rows (16-bit values, row stride `stride` elements) into
  // dst[c * W + l]: unpacks of 16-, 32- and 64-bit units within each 128-bit lane leave channel k
  // in the low and channel 8 + k in the high 128 bits of one register.
  static void stage_u16(const uint16_t* src, int64_t stride, uint16_t* dst) {
    __m256i r[8], a[8], b[8];
    for (int l = 0; l < 8; ++l)
      r[l] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + l * stride));
    for (int p = 0; p < 4; ++p) {  // a[2p]: rows 2p, 2p+1 of channels 0-3; a[2p+1]: 4-7
      a[2 * p] = _mm256_unpacklo_epi16(r[2 * p], r[2 * p + 1]);
      a[2 * p + 1] = _mm256_unpackhi_epi16(r[2 * p], r[2 * p + 1]);
    }
    for (int p = 0; p < 2; ++p) {  // b[4p + q]: rows 4p..4p+3 of channels 2q, 2q+1
      b[4 * p + 0] = _mm256_unpacklo_epi32(a[4 * p], a[4 * p + 2]);
      b[4 * p + 1] = _mm256_unpackhi_epi32(a[4 * p], a[4 * p + 2]);
      b[4 * p + 2] = _mm256_unpacklo_epi32(a[4 * p + 1], a[4 * p + 3]);
      b[4 * p + 3] = _mm256_unpackhi_epi32(a[4 * p + 1], a[4 * p + 3]);
    }
    for (int c = 0; c < 8; ++c) {  // channel c (low 128 bits) and 8 + c (high), rows 0-7
      const __m256i v = (c & 1) ? _mm256_unpackhi_epi64(b[c / 2], b[4 + c / 2])
                                : _mm256_unpacklo_epi64(b[c / 2], b[4 + c / 2]);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + c * 8), _mm256_castsi256_si128(v));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (c + 8) * 8),
                       _mm256_extracti128_si256(v, 1));
    }
  }
  // 8 x 8 transpose of 32-bit values: out[k] lane l = in[l] lane k.
  static void transpose8(const __m256* in, __m256* out) {
    __m256 t[8], u[8];
    for (int p = 0; p < 4; ++p) {
      t[2 * p] = _mm256_unpacklo_ps(in[2 * p], in[2 * p + 1]);
      t[2 * p + 1] = _mm256_unpackhi_ps(in[2 * p], in[2 * p + 1]);
    }
    for (int p = 0; p < 2; ++p) {
      u[4 * p + 0] = _mm256_shuffle_ps(t[4 * p], t[4 * p + 2], 0x44);
      u[4 * p + 1] = _mm256_shuffle_ps(t[4 * p], t[4 * p + 2], 0xEE);
      u[4 * p + 2] = _mm256_shuffle_ps(t[4 * p + 1], t[4 * p + 3], 0x44);
      u[4 * p + 3] = _mm256_shuffle_ps(t[4 * p + 1], t[4 * p + 3], 0xEE);
    }
    for (int k = 0; k < 4; ++k) {
      out[k] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x20);
      out[k + 4] = _mm256_permute2f128_ps(u[k], u[4 + k], 0x31);
    }
  }
  // Transposes W channels of W fp32 rows (row stride `stride`) into dst[c * W + l].
  static void stage_f32(const float* src, int64_t stride, float* dst) {
    __m256 r[8], o[8];
    for (int l = 0; l < 8; ++l) r[l] = _mm256_loadu_ps(src + l * stride);
    transpose8(r, o);
    for (int c = 0; c < 8; ++c) _mm256_storeu_ps(dst + c * 8, o[c]);
  }
  // W staged 16-bit values widened exactly (docs/spec.md §0).
  static V load_f16(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static V load_bf16(const uint16_t* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static V neg(V v) { return _mm256_xor_ps(v, _mm256_set1_ps(-0.0f)); }  // exact sign flip
  static V max_abs(V m, V d) { return _mm256_max_ps(m, abs(d)); }        // m >= 0
  static unsigned sign_lanes(VI v) {
    return static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(v)));
  }
  // ---- Code primitives of attention_codes.h (same meaning as in the AVX-512 traits) ---------
  static VI gather_u32(const uint8_t* base, VI off) {
    return _mm256_i32gather_epi32(reinterpret_cast<const int*>(base), off, 1);
  }
  // AVX2 has no unsigned conversion: halve (exact, the low bit is added back), convert, double.
  static V cvt_u32(VI v) {
    const V hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 1));
    const V lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(1)));
    return _mm256_add_ps(_mm256_add_ps(hi, hi), lo);
  }
  static V cvt_top(VI v) {  // a field ending at bit 31 has its bit 0 clear (its width <= 8)
    const V h = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 1));
    return _mm256_add_ps(h, h);
  }
  template <int P>
  static VI bcast_bits(const uint8_t* p) {
    if constexpr (P == 8) {
      return _mm256_set1_epi8(static_cast<char>(*p));
    } else if constexpr (P == 16) {
      uint16_t w;
      std::memcpy(&w, p, 2);
      return _mm256_set1_epi16(static_cast<short>(w));
    } else if constexpr (P == 32) {
      uint32_t w;
      std::memcpy(&w, p, 4);
      return _mm256_set1_epi32(static_cast<int>(w));
    } else {
      static_assert(P == 64);
      uint64_t w;
      std::memcpy(&w, p, 8);
      return _mm256_set1_epi64x(static_cast<long long>(w));
    }
  }
  static VI shl16(VI v) { return _mm256_slli_epi32(v, 16); }
  // Word k < count of lane l goes to out + l * stride + 4 * k (count <= 8): a transpose.
  static void store_words(const VI* w, int count, uint8_t* out, int64_t stride) {
    __m256 in[8], o[8];
    for (int k = 0; k < 8; ++k) in[k] = k < count ? _mm256_castsi256_ps(w[k]) : _mm256_setzero_ps();
    transpose8(in, o);
    for (int l = 0; l < 8; ++l) {
      if (count == 8) {
        _mm256_storeu_ps(reinterpret_cast<float*>(out + l * stride), o[l]);
      } else {
        alignas(32) uint8_t t[32];
        _mm256_store_ps(reinterpret_cast<float*>(t), o[l]);
        std::memcpy(out + l * stride, t, static_cast<size_t>(count) * 4);
      }
    }
  }
};

}  // namespace kvq::avx2
