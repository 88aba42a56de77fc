// Scalar F16C / SSE4.1 / FMA helpers shared by the ISA traits (simd_avx2.h, simd_avx512.h).
// A template over the traits type that derives from it, so each ISA unit instantiates its own
// copy, compiled with its own -m flags and named after its ISA: no inline function compiled for
// AVX-512 can be chosen by the linker for the AVX2 unit (see kernels.h).
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace kvq::avx {

template <class Isa>
struct ScalarOps {
  // fp16 conversion, round to nearest even (equal to reference/half.h; tests/test_avx.cpp
  // checks every input class exhaustively).
  static uint16_t to_half(float f) {
    return static_cast<uint16_t>(_mm_extract_epi16(
        _mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), 0));
  }
  static float from_half(uint16_t h) { return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h))); }
  static float round_ne_scalar(float f) {
    return _mm_cvtss_f32(_mm_round_ss(_mm_setzero_ps(), _mm_set_ss(f),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  // fma(a, b, c) with one rounding (docs/spec.md §3 dequantization).
  static float fma_scalar(float a, float b, float c) {
    return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
  }
};

}  // namespace kvq::avx
