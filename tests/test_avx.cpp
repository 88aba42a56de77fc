// The AVX-512 and AVX2 backends against the reference backend, bit for bit, for every exact op
// (docs/spec.md §1-§5), on each ISA level this CPU has; levels it lacks are reported, not faked.
#include <omp.h>

#include <algorithm>
#include <bit>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backends/avx/avx_backend.h"
#include "backends/backend.h"
#include "backends/reference_backend.h"
#include "reference/attention.h"
#include "reference/error.h"
#include "reference/half.h"
#include "reference/quantize.h"
#include "reference/rotation.h"
#include "verify/compare.h"

namespace kvq {
namespace {

struct Isa {
  std::string name;
  std::unique_ptr<Backend> backend;
};

// Every AVX level this CPU runs (ignoring KVQ_MAX_ISA); a missing level is printed once.
std::vector<Isa>& isas() {
  static std::vector<Isa> list = [] {
    std::vector<Isa> out;
    for (const BackendEntry& e : avx_backend_entries()) {
      if (avx_kernels_for(e.name)) {
        out.push_back({e.name, e.make()});
      } else {
        std::printf("NOTE: %s not tested on this CPU (%s)\n", e.name.c_str(), e.detail.c_str());
      }
    }
    return out;
  }();
  return list;
}

const Backend& ref() {
  static const std::unique_ptr<Backend> r = make_reference_backend();
  return *r;
}

// Synthetic K/V-like data: N(0,1), a few outlier channels (x30), one massive token (x100),
// exact +0 and -0 in varying order, repeated values (ties at min/max).
std::vector<float> make_data(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(rows * cols));
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t c = 0; c < cols; ++c) {
      float v = normal(rng);
      if (c % 37 == 5) v *= 30.0f;
      if (t == 3) v *= 100.0f;
      const uint32_t r = rng() % 97;
      if (r == 0) v = 0.0f;
      if (r == 1) v = -0.0f;
      if (r == 2) v = 2.5f;  // ties: .5 cases after scaling are likely with repeated values
      x[static_cast<size_t>(t * cols + c)] = v;
    }
  // A row of only zeros (mixed signs) and a constant row exercise s == 0 and the zero-sign rule.
  if (rows > 5) {
    for (int64_t c = 0; c < cols; ++c) {
      x[static_cast<size_t>(5 * cols + c)] = (c % 3 == 0) ? -0.0f : 0.0f;
      if (rows > 6) x[static_cast<size_t>(6 * cols + c)] = 1.25f;
    }
  }
  return x;
}

std::vector<int32_t> make_perm(int64_t channels, uint32_t seed) {
  std::vector<int32_t> p(static_cast<size_t>(channels));
  std::iota(p.begin(), p.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(p.begin(), p.end(), rng);
  return p;
}

// "" when bitwise equal, else where the first mismatch is (Catch prints it on failure).
std::string bitwise_diff(const Quantized& expected, const Quantized& got, const std::string& what) {
  const Comparison c = compare_quantized(expected, got);
  if (c.passed()) return "";
  return what + ": first mismatch in " + c.where + " at " + std::to_string(c.first_mismatch) +
         " expected " + c.expected + " got " + c.got;
}

std::string bitwise_diff(std::span<const float> expected, std::span<const float> got,
                         const std::string& what) {
  const Comparison c = compare_bitwise(expected, got);
  if (c.passed()) return "";
  return what + ": first mismatch at " + std::to_string(c.first_mismatch) + " expected " +
         c.expected + " got " + c.got;
}

struct KvCase {
  int64_t tokens, heads, head_dim;
};
// The brief's shapes: head_dim 64, 128, 256; tokens 1, 7, 128, 4099 (odd tails); the longest
// only at d = 128 to keep the run short on 2 cores.
std::vector<KvCase> kv_cases() {
  std::vector<KvCase> out;
  for (int64_t d : {64, 128, 256})
    for (int64_t t : {1, 7, 128, 4099})
      if (t != 4099 || d == 128) out.push_back({t, 8, d});
  return out;
}

std::string describe(const KvCase& k) {
  return "T" + std::to_string(k.tokens) + " H" + std::to_string(k.heads) + " d" +
         std::to_string(k.head_dim);
}

TEST_CASE("avx: fp16 narrowing equals reference/half.h for every fp32 bit pattern") {
  for (const Isa& isa : isas()) {
    const avx::Kernels* k = avx_kernels_for(isa.name);
    REQUIRE(k);
    int64_t mismatches = 0;
    uint32_t first = 0;
#pragma omp parallel for schedule(static) reduction(+ : mismatches)
    for (int64_t hi = 0; hi < 65536; ++hi) {
      for (uint32_t lo = 0; lo < 65536; ++lo) {
        const uint32_t bits = static_cast<uint32_t>(hi) << 16 | lo;
        const float f = std::bit_cast<float>(bits);
        const uint16_t a = float_to_half(f), b = k->to_half(f);
        // NaN payloads: both must be NaN with the same sign; F16C keeps the quiet payload as
        // half.h does, so compare bits outright.
        if (a != b) {
          ++mismatches;
#pragma omp critical
          if (first == 0) first = bits;
        }
      }
    }
    INFO(isa.name << ": first mismatching fp32 bits 0x" << std::hex << first);
    REQUIRE(mismatches == 0);
  }
}

TEST_CASE("avx: fp16 widening equals reference/half.h for all 65536 halves") {
  for (const Isa& isa : isas()) {
    const avx::Kernels* k = avx_kernels_for(isa.name);
    for (uint32_t h = 0; h < 65536; ++h) {
      const float a = half_to_float(static_cast<uint16_t>(h));
      const float b = k->from_half(static_cast<uint16_t>(h));
      INFO(isa.name << " half 0x" << std::hex << h);
      // F16C quiets a signaling NaN (sets bit 22) where half.h keeps it; NaN never reaches a
      // result (inputs are checked, stored scales are finite), so NaN compares up to that bit.
      const bool nan = (h & 0x7C00u) == 0x7C00u && (h & 0x3FFu) != 0;
      const uint32_t quiet = nan ? 0x00400000u : 0u;
      REQUIRE((std::bit_cast<uint32_t>(a) | quiet) == (std::bit_cast<uint32_t>(b) | quiet));
    }
  }
}

TEST_CASE("avx: fwht equals the reference bitwise for n = 2 .. 32768 and odd block counts") {
  for (int n = 2; n <= 32768; n *= 2) {
    const int64_t blocks = n <= 4096 ? 7 : 1;
    const std::vector<float> x = make_data(blocks, n, static_cast<uint32_t>(n));
    std::vector<float> expected = x;
    ref().fwht(expected, n);
    for (const Isa& isa : isas()) {
      std::vector<float> got = x;
      isa.backend->fwht(got, n);
      REQUIRE(bitwise_diff(expected, got, isa.name + " fwht n=" + std::to_string(n)) == "");
    }
  }
}

TEST_CASE("avx: reorder, rotate_k and rotate_v equal the reference bitwise") {
  for (const KvCase& kc : kv_cases()) {
    const KvShape shape{kc.tokens, kc.heads, kc.head_dim};
    const std::vector<float> x = make_data(kc.tokens, shape.channels(), 11);
    RotationParams with_perm;
    with_perm.perm = make_perm(shape.channels(), 5);
    const RotationParams no_perm;
    const auto rk = ref().rotate_k(x, shape, with_perm);
    const auto rk0 = ref().rotate_k(x, shape, no_perm);
    const auto rv = ref().rotate_v(x, shape);
    const auto ro = ref().reorder(x, kc.tokens, with_perm.perm);
    for (const Isa& isa : isas()) {
      const std::string what = isa.name + " " + describe(kc);
      REQUIRE(bitwise_diff(rk, isa.backend->rotate_k(x, shape, with_perm),
                           what + " rotate_k+perm") == "");
      REQUIRE(bitwise_diff(rk0, isa.backend->rotate_k(x, shape, no_perm), what + " rotate_k") ==
              "");
      REQUIRE(bitwise_diff(rv, isa.backend->rotate_v(x, shape), what + " rotate_v") == "");
      REQUIRE(bitwise_diff(ro, isa.backend->reorder(x, kc.tokens, with_perm.perm),
                           what + " reorder") == "");
    }
  }
}

TEST_CASE("avx: quantize and dequantize equal the reference for b in {1,2,3,4,8}, both axes") {
  for (const KvCase& kc : kv_cases()) {
    const int64_t cols = kc.heads * kc.head_dim;
    const std::vector<float> x = make_data(kc.tokens, cols, 7);
    for (int bits : {1, 2, 3, 4, 8})
      for (Axis axis : {Axis::Token, Axis::Channel})
        for (ZeroPoint zp : {ZeroPoint::Float, ZeroPoint::Int}) {
          if (kc.tokens == 4099 && zp == ZeroPoint::Int && bits != 2) continue;  // time
          QuantParams p;
          p.bits = bits;
          p.axis = axis;
          p.zero_point = zp;
          p.clip = bits == 2 ? 0.8f : 1.0f;
          p.group = 128;
          const Quantized expected = ref().quantize(x, kc.tokens, cols, p);
          const std::vector<float> deq = ref().dequantize(expected);
          for (const Isa& isa : isas()) {
            const std::string what = isa.name + " " + describe(kc) + " b" + std::to_string(bits) +
                                     (axis == Axis::Token ? " token" : " channel") +
                                     (zp == ZeroPoint::Float ? " float" : " int");
            const Quantized got = isa.backend->quantize(x, kc.tokens, cols, p);
            REQUIRE(bitwise_diff(expected, got, what) == "");
            REQUIRE(bitwise_diff(deq, isa.backend->dequantize(expected), what + " dequantize") ==
                    "");
          }
        }
  }
}

TEST_CASE("avx: quantize with group sizes that leave tails (G = 48, 7, G > axis)") {
  const int64_t rows = 131, cols = 200;
  const std::vector<float> x = make_data(rows, cols, 3);
  for (int64_t g : {48, 7, 1000})
    for (int bits : {1, 2, 3, 4, 8})
      for (Axis axis : {Axis::Token, Axis::Channel}) {
        QuantParams p;
        p.bits = bits;
        p.axis = axis;
        p.group = g;
        const Quantized expected = ref().quantize(x, rows, cols, p);
        for (const Isa& isa : isas()) {
          const std::string what = isa.name + " G" + std::to_string(g) + " b" +
                                   std::to_string(bits) +
                                   (axis == Axis::Token ? " token" : " chan");
          REQUIRE(bitwise_diff(expected, isa.backend->quantize(x, rows, cols, p), what) == "");
          REQUIRE(bitwise_diff(ref().dequantize(expected), isa.backend->dequantize(expected),
                               what + " dequantize") == "");
        }
      }
}

TEST_CASE("avx: min/max ties between +0 and -0 keep the first zero's sign, as the reference") {
  // Groups of zeros only, in both sign orders: scale16 and zero16 carry the sign of the first.
  for (const Isa& isa : isas())
    for (float first : {0.0f, -0.0f}) {
      std::vector<float> x(64, -first);
      x[0] = first;
      for (Axis axis : {Axis::Token, Axis::Channel}) {
        QuantParams p;
        p.axis = axis;
        p.group = 64;
        const int64_t rows = axis == Axis::Token ? 1 : 64;
        const int64_t cols = axis == Axis::Token ? 64 : 1;
        const Quantized expected = ref().quantize(x, rows, cols, p);
        const Quantized got = isa.backend->quantize(x, rows, cols, p);
        REQUIRE(got.zero == expected.zero);
        REQUIRE(got.scale == expected.scale);
        REQUIRE(expected.zero[0] == (std::signbit(first) ? 0x8000 : 0x0000));
      }
    }
}

TEST_CASE("avx: fused rotate_quantize equals reference_rotate_quantize (F16, F32, BF16 input)") {
  for (const KvCase& kc : kv_cases()) {
    const KvShape shape{kc.tokens, kc.heads, kc.head_dim};
    const std::vector<float> x = make_data(kc.tokens, shape.channels(), 21);
    Tensor f32 = Tensor::from_f32(x, {kc.tokens, kc.heads, kc.head_dim});
    Tensor f16(DType::F16, {kc.tokens, kc.heads, kc.head_dim});
    Tensor bf16(DType::BF16, {kc.tokens, kc.heads, kc.head_dim});
    for (size_t i = 0; i < x.size(); ++i) {
      f16.data<uint16_t>()[i] = float_to_half(x[i] / 1024.0f);  // keep fp16 finite
      bf16.data<uint16_t>()[i] = float_to_bf16(x[i]);
    }
    for (AppendRotation rotation :
         {AppendRotation::None, AppendRotation::KeyGrouped, AppendRotation::PerHead})
      for (int bits : {1, 2, 3, 4, 8})
        for (Axis axis : {Axis::Token, Axis::Channel}) {
          if (kc.tokens == 4099 && bits != 2 && bits != 3) continue;  // time on 2 cores
          RotateQuantizeParams p;
          p.rotation = rotation;
          p.rotation_params.perm = make_perm(shape.channels(), 9);
          p.quant.bits = bits;
          p.quant.axis = axis;
          p.quant.clip = bits == 2 ? 0.8f : 1.0f;
          for (const Tensor* t : {&f16, &f32, &bf16}) {
            if (t == &bf16 && bits != 4) continue;
            const Quantized expected = reference_rotate_quantize(t->view(), shape, p);
            for (const Isa& isa : isas()) {
              const std::string what =
                  isa.name + " " + describe(kc) + " rot" +
                  std::to_string(static_cast<int>(rotation)) + " b" + std::to_string(bits) +
                  (axis == Axis::Token ? " token " : " channel ") + dtype_name(t->dtype);
              REQUIRE(bitwise_diff(expected, isa.backend->rotate_quantize(t->view(), shape, p),
                                   what) == "");
            }
          }
        }
  }
}

TEST_CASE("avx: results do not depend on the OpenMP thread count (1 vs 2)") {
  const KvShape shape{4099, 8, 128};
  const std::vector<float> x = make_data(shape.tokens, shape.channels(), 31);
  const Tensor t = Tensor::from_f32(x, {shape.tokens, shape.heads, shape.head_dim});
  RotateQuantizeParams p;
  p.rotation_params.perm = make_perm(shape.channels(), 2);
  for (const Isa& isa : isas())
    for (Axis axis : {Axis::Token, Axis::Channel}) {
      p.quant.axis = axis;
      omp_set_num_threads(1);
      const Quantized one = isa.backend->rotate_quantize(t.view(), shape, p);
      const TokenAbsmax a1 = isa.backend->token_absmax(x, shape.tokens, shape.channels());
      omp_set_num_threads(2);
      const Quantized two = isa.backend->rotate_quantize(t.view(), shape, p);
      const TokenAbsmax a2 = isa.backend->token_absmax(x, shape.tokens, shape.channels());
      REQUIRE(bitwise_diff(one, two, isa.name + " threads 1 vs 2") == "");
      REQUIRE(a1.argmax == a2.argmax);
    }
}

TEST_CASE("avx: token_absmax equals the reference (values and lowest argmax on ties)") {
  for (int64_t hidden : {1, 7, 64, 257, 4096}) {
    std::vector<float> h = make_data(129, hidden, 4);
    for (int64_t t = 0; t < 129; t += 9) h[static_cast<size_t>(t * hidden + hidden - 1)] = -1e4f;
    for (int64_t t = 1; t < 129; t += 9) h[static_cast<size_t>(t * hidden)] = 1e4f;  // ties
    const TokenAbsmax e = ref().token_absmax(h, 129, hidden);
    for (const Isa& isa : isas()) {
      const TokenAbsmax g = isa.backend->token_absmax(h, 129, hidden);
      REQUIRE(bitwise_diff(e.absmax, g.absmax,
                           isa.name + " absmax hidden " + std::to_string(hidden)) == "");
      REQUIRE(g.argmax == e.argmax);
    }
  }
}

TEST_CASE("avx: non-finite input and fp16 overflow fail with the reference's error") {
  std::vector<float> x = make_data(16, 256, 1);
  x[1000] = std::numeric_limits<float>::infinity();
  std::vector<float> big(256, 0.0f);
  big[3] = 1e30f;  // (hi - lo) / 3 overflows fp16
  QuantParams p;
  for (const Isa& isa : isas()) {
    REQUIRE_THROWS_WITH(isa.backend->quantize(x, 16, 256, p),
                        "x: non-finite value inf at index 1000");
    std::string expected;
    try {
      ref().quantize(big, 1, 256, p);
    } catch (const Error& e) {
      expected = e.what();
    }
    REQUIRE_THROWS_WITH(isa.backend->quantize(big, 1, 256, p), expected);
    const Tensor t = Tensor::from_f32(x, {16, 2, 128});
    RotateQuantizeParams rp;
    rp.rotation_params.head_group = 2;
    REQUIRE_THROWS_WITH(isa.backend->rotate_quantize(t.view(), {16, 2, 128}, rp),
                        "rotate_quantize input: non-finite value inf at index 1000");
  }
}

// ---- fused rotate_quantize: the token-block path (backends/avx/rotate_quantize.h) ----------

// The reference's error text for this rotate_quantize, or "" when it succeeds.
std::string reference_error(const Tensor& t, const KvShape& shape, const RotateQuantizeParams& p) {
  try {
    reference_rotate_quantize(t.view(), shape, p);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST_CASE("avx: rotate_quantize token blocks equal the reference for every layout they take") {
  // 37 (21) tokens: 2 (1) blocks of 16 on AVX-512, 4 (2) of 8 on AVX2, plus per-token tails.
  // Channels 32, 256, 1024 and 4096; fwht sizes n = 8 .. 4096 and none (1 to 12 stages: every split
  // into register passes), with and without the permutation; b in {1, 2, 4, 8} with G * b a
  // multiple of 32 (the block path's layouts); both zero points, clip 0.8 and 1.0; F16 / BF16 / F32
  // input.
  for (const KvCase& kc :
       {KvCase{37, 4, 8}, KvCase{37, 2, 128}, KvCase{37, 8, 128}, KvCase{21, 16, 256}}) {
    const KvShape shape{kc.tokens, kc.heads, kc.head_dim};
    const std::vector<float> x = make_data(shape.tokens, shape.channels(), 5);
    Tensor f32 = Tensor::from_f32(x, {shape.tokens, shape.heads, shape.head_dim});
    Tensor f16(DType::F16, {shape.tokens, shape.heads, shape.head_dim});
    Tensor bf16(DType::BF16, {shape.tokens, shape.heads, shape.head_dim});
    for (size_t i = 0; i < x.size(); ++i) {
      f16.data<uint16_t>()[i] = float_to_half(x[i] / 1024.0f);
      bf16.data<uint16_t>()[i] = float_to_bf16(x[i]);
    }
    for (AppendRotation rotation :
         {AppendRotation::None, AppendRotation::KeyGrouped, AppendRotation::PerHead})
      for (int wide : {0, 1})  // head groups of 1 or 2 heads (4 or 8 at 8, 8 or 16 at 16)
        for (bool perm : {false, true})
          for (int bits : {1, 2, 4, 8})
            for (int64_t group : {32, 128, 256})
              for (ZeroPoint zp : {ZeroPoint::Float, ZeroPoint::Int}) {
                if (rotation != AppendRotation::KeyGrouped && (wide || perm)) continue;
                const int head_group = (kc.heads >= 8 ? kc.heads / 2 : 1) << wide;
                RotateQuantizeParams p;
                p.rotation = rotation;
                p.rotation_params.head_group = head_group;
                if (perm) p.rotation_params.perm = make_perm(shape.channels(), 11);
                p.quant.bits = bits;
                p.quant.group = group;
                p.quant.zero_point = zp;
                p.quant.clip = group == 128 ? 0.8f : 1.0f;
                for (const Tensor* t : {&f16, &bf16, &f32}) {
                  if (t != &f16 && (group != 128 || zp == ZeroPoint::Int)) continue;  // time
                  const Quantized expected = reference_rotate_quantize(t->view(), shape, p);
                  for (const Isa& isa : isas()) {
                    const std::string what =
                        isa.name + " " + describe(kc) + " rot" +
                        std::to_string(static_cast<int>(rotation)) + " g" +
                        std::to_string(head_group) + (perm ? " perm" : "") + " b" +
                        std::to_string(bits) + " G" + std::to_string(group) +
                        (zp == ZeroPoint::Int ? " int " : " float ") + dtype_name(t->dtype);
                    REQUIRE(bitwise_diff(expected,
                                         isa.backend->rotate_quantize(t->view(), shape, p),
                                         what) == "");
                  }
                }
              }
  }
}

TEST_CASE("avx: rotate_quantize codes at exact half-integer ties round to even, as the reference") {
  // Without rotation, every group holds -1 and 2 (so z = -1 and s = 1 exactly) and values whose
  // t = (x - z) / s lands on the ties 0.5, 1.5, 2.5 (rne: 0, 2, 2), where the reciprocal filter
  // must hand over to the correctly rounded division, or just off them (0.5 + 2^-23 -> 1,
  // 2.5 + 2^-22 -> 3). Checked against the reference and hand-worked codes.
  const KvShape shape{32, 1, 128};
  std::vector<float> x(static_cast<size_t>(shape.tokens * shape.channels()));
  const float ties[] = {-0.5f, 0.5f, 1.5f, -0.5f + 0x1p-23f, 1.5f + 0x1p-22f};  // codes 0 2 2 1 3
  for (int64_t t = 0; t < shape.tokens; ++t)
    for (int64_t c = 0; c < 128; ++c)
      x[static_cast<size_t>(t * 128 + c)] = c == 0 ? -1.0f : c == 1 ? 2.0f : ties[(c + t) % 5];
  const Tensor f32 = Tensor::from_f32(x, {shape.tokens, 1, 128});
  RotateQuantizeParams p;
  p.rotation = AppendRotation::None;
  p.quant.bits = 2;
  p.quant.clip = 1.0f;
  const Quantized expected = reference_rotate_quantize(f32.view(), shape, p);
  REQUIRE(expected.scale[0] == 0x3C00);  // 1.0
  REQUIRE(expected.zero[0] == 0xBC00);   // -1.0
  // Token 0: codes 0..3 = 0 (x -1), 3 (x 2), 2 (tie 2.5), 1; codes 4..7 = 3, 0 (tie 0.5), 2 (tie
  // 1.5), 2 (tie 2.5); code 4j + k at bits 2k of byte j.
  REQUIRE(expected.codes[0] == (0 | 3 << 2 | 2 << 4 | 1 << 6));
  REQUIRE(expected.codes[1] == (3 | 0 << 2 | 2 << 4 | 2 << 6));
  for (const Isa& isa : isas())
    REQUIRE(bitwise_diff(expected, isa.backend->rotate_quantize(f32.view(), shape, p),
                         isa.name + " ties") == "");
}

TEST_CASE(
    "avx: rotate_quantize with zero, constant and subnormal-scale tokens equals the reference") {
  // Tokens inside blocks whose groups hit every case the block path hands back to the per-token
  // path: min or max exactly +-0 (the reference keeps the first zero's sign), a constant group
  // (s == 0), and, with the integer zero point, an fp32 scale below 2^-128 whose reciprocal
  // overflows to inf.
  const KvShape shape{48, 2, 128};
  std::vector<float> x = make_data(shape.tokens, shape.channels(), 17);
  for (int64_t c = 0; c < shape.channels(); ++c) {
    x[static_cast<size_t>(9 * 256 + c)] = c % 2 ? 0.0f : -0.0f;             // all zeros
    x[static_cast<size_t>(10 * 256 + c)] = 0.75f;                           // constant
    x[static_cast<size_t>(11 * 256 + c)] = (c % 5 - 2) * 1e-39f;            // subnormal range
    x[static_cast<size_t>(12 * 256 + c)] = c % 3 == 0 ? 0.0f : 1.0f + c;    // min 0
    x[static_cast<size_t>(13 * 256 + c)] = c % 3 == 0 ? -0.0f : -1.0f - c;  // max -0
  }
  const Tensor f32 = Tensor::from_f32(x, {shape.tokens, shape.heads, shape.head_dim});
  for (ZeroPoint zp : {ZeroPoint::Float, ZeroPoint::Int})
    for (int bits : {2, 4}) {
      RotateQuantizeParams p;
      p.rotation = AppendRotation::None;
      p.quant.bits = bits;
      p.quant.zero_point = zp;
      p.quant.clip = 1.0f;
      const Quantized expected = reference_rotate_quantize(f32.view(), shape, p);
      for (const Isa& isa : isas())
        REQUIRE(bitwise_diff(expected, isa.backend->rotate_quantize(f32.view(), shape, p),
                             isa.name + " b" + std::to_string(bits) +
                                 (zp == ZeroPoint::Int ? " int" : " float")) == "");
    }
}

TEST_CASE(
    "avx: quantize with an integer zero point and a scale below 2^-128 equals the reference") {
  // s = (hi - lo) / 3 = 2e-39 is subnormal and fl(1/s) overflows to inf: the reciprocal filter
  // must count such lanes as near a tie and divide (x = 0 gives rne(0 / s) + zp = zp = 2).
  const std::vector<float> x = {-3e-39f, 0.0f, 3e-39f, 1e-39f, -1e-39f, 2e-39f, 0.0f, -2e-39f};
  QuantParams p;
  p.zero_point = ZeroPoint::Int;
  p.group = 8;
  const Quantized expected = ref().quantize(x, 1, 8, p);
  REQUIRE(expected.zero_int[0] == 2);  // rne(3e-39 / 2e-39) = rne(1.5) = 2
  for (const Isa& isa : isas())
    REQUIRE(bitwise_diff(expected, isa.backend->quantize(x, 1, 8, p), isa.name) == "");
}

TEST_CASE("avx: rotate_quantize reports non-finite values inside a token block as the reference") {
  // NaN and inf at positions inside blocks, in F16 and F32 input, and an fp32 input whose fwht
  // overflows to inf (the reference reports an overflow inside the rotation at the index of the
  // rotated value): same message, same index.
  const KvShape shape{40, 8, 128};
  const std::vector<float> x = make_data(shape.tokens, shape.channels(), 23);
  RotateQuantizeParams p;
  p.rotation_params.perm = make_perm(shape.channels(), 4);
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  struct Bad {
    int64_t index;
    float value;
  };
  for (const Bad& bad : {Bad{21 * 1024 + 700, nan}, Bad{5 * 1024 + 3, -inf},
                         Bad{33 * 1024 + 1023, inf}, Bad{17 * 1024, 3e38f}})
    for (DType dtype : {DType::F32, DType::F16}) {
      if (dtype == DType::F16 && bad.value == 3e38f) continue;
      std::vector<float> y = x;
      y[static_cast<size_t>(bad.index)] = bad.value;
      if (bad.value == 3e38f) y[static_cast<size_t>(bad.index + 1)] = 3e38f;  // sums overflow
      Tensor t = Tensor::from_f32(y, {shape.tokens, shape.heads, shape.head_dim});
      if (dtype == DType::F16) {
        Tensor h(DType::F16, {shape.tokens, shape.heads, shape.head_dim});
        for (size_t i = 0; i < y.size(); ++i) h.data<uint16_t>()[i] = float_to_half(y[i] / 1024.0f);
        t = std::move(h);
      }
      const std::string expected = reference_error(t, shape, p);
      REQUIRE(expected != "");
      if (bad.value == 3e38f) CHECK_THAT(expected, Catch::Matchers::Contains("overflow inside"));
      for (const Isa& isa : isas())
        REQUIRE_THROWS_WITH(isa.backend->rotate_quantize(t.view(), shape, p), expected);
    }
}

// ---- decode attention (docs/spec.md §7: tolerance against the fp64 oracle) ----------------------

// How a test cache stores K and V (reference/attention.h DecodeCache).
struct CacheLayout {
  int bits = 2;
  Axis axis = Axis::Token;
  KeyRotation k_rotation = KeyRotation::None;
  bool k_pre_rope = false;
  bool v_hadamard = false;
  bool kept = false;      // fp16 rows for tokens 0, T/2 and T-1 (K and V), parts around them
  bool outliers = false;  // sparse fp16 outliers replacing dequantized values
  bool exact_k = false;   // the fp32 method's exact K rows
  ZeroPoint zero_point = ZeroPoint::Float;
  std::string name() const {
    return "b" + std::to_string(bits) + (axis == Axis::Token ? " token" : " channel") + " rot" +
           std::to_string(static_cast<int>(k_rotation)) + (k_pre_rope ? " pre-rope" : "") +
           (v_hadamard ? " v-hadamard" : "") + (kept ? " kept" : "") +
           (outliers ? " outliers" : "") + (exact_k ? " exact-k" : "") +
           (zero_point == ZeroPoint::Int ? " int-zero" : "");
  }
};

// Adds one quantized part to c: the tokens t with keep(t), not kept, their K rows from ks and V
// rows from vs (the quantizer's input basis), quantized with qp.
template <class Keep>
void add_quantized_part(DecodeCache& c, const std::vector<float>& ks, const std::vector<float>& vs,
                        const QuantParams& qp, Keep keep) {
  const int64_t tokens = c.shape.tokens, channels = c.shape.channels();
  DecodeCache::QuantizedRows kp, vp;
  std::vector<float> kr, vr;
  for (int64_t t = 0; t < tokens; ++t) {
    if (!keep(t) || c.kept[static_cast<size_t>(t)]) continue;
    kp.tokens.push_back(static_cast<int32_t>(t));
    kr.insert(kr.end(), ks.begin() + t * channels, ks.begin() + (t + 1) * channels);
    vr.insert(vr.end(), vs.begin() + t * channels, vs.begin() + (t + 1) * channels);
  }
  if (kp.tokens.empty()) return;
  vp.tokens = kp.tokens;
  const auto rows = static_cast<int64_t>(kp.tokens.size());
  kp.q = quantize(kr, rows, channels, qp);
  vp.q = quantize(vr, rows, channels, qp);
  c.k_parts.push_back(std::move(kp));
  c.v_parts.push_back(std::move(vp));
}

// K and V of `tokens` tokens as a method would store them. With kept rows, the quantized
// tokens go into two parts (the even ones at `bits`, the odd ones at 8 bits, as AKVQ-VL's
// two widths), so sinks are outside every quantization group (docs/spec.md §4).
DecodeCache make_cache(const KvShape& shape, const CacheLayout& l, uint32_t seed) {
  const int64_t tokens = shape.tokens, channels = shape.channels();
  // Scaled so scores spread over a few units: the massive token draws attention, not all of it.
  std::vector<float> k = make_data(tokens, channels, seed);
  std::vector<float> v = make_data(tokens, channels, seed + 1);
  for (float& x : k) x *= 0.05f;
  for (float& x : v) x *= 0.25f;
  DecodeCache c;
  c.shape = shape;
  c.k_pre_rope = l.k_pre_rope;
  c.rope_theta = 10000.0f;
  c.k_rotation = l.k_rotation;
  c.v_per_head_hadamard = l.v_hadamard;
  c.k_rotation_params.head_group = 2;
  c.k_rotation_params.perm = make_perm(channels, seed + 2);
  std::vector<float> ks = k;  // the quantizer's input basis
  if (l.k_rotation == KeyRotation::GroupedHadamard) ks = rotate_k(k, shape, c.k_rotation_params);
  if (l.k_rotation == KeyRotation::PerHeadHadamard) ks = rotate_v(k, shape);
  const std::vector<float> vs = l.v_hadamard ? rotate_v(v, shape) : v;
  QuantParams qp;
  qp.bits = l.bits;
  qp.axis = l.axis;
  qp.group = l.axis == Axis::Token ? 64 : 32;  // channel axis: T = 4099 leaves a tail group
  qp.zero_point = l.zero_point;
  if (!l.kept) {
    c.k = quantize(ks, tokens, channels, qp);
    c.v = quantize(vs, tokens, channels, qp);
  } else {
    c.kept.assign(static_cast<size_t>(tokens), 0);
    for (int64_t t : {int64_t{0}, tokens / 2, tokens - 1}) c.kept[static_cast<size_t>(t)] = 1;
    for (float x : k) c.k_fp16.push_back(float_to_half(x));
    for (float x : v) c.v_fp16.push_back(float_to_half(x));
    for (int parity = 0; parity < 2; ++parity) {
      QuantParams pp = qp;
      if (parity == 1) pp.bits = 8;
      add_quantized_part(c, ks, vs, pp, [&](int64_t t) { return t % 2 == parity; });
    }
  }
  if (l.outliers) {
    for (int64_t i = 3; i < tokens * channels; i += 97) {
      c.k_outliers.index.push_back(static_cast<int32_t>(i));
      c.k_outliers.value.push_back(float_to_half(ks[static_cast<size_t>(i)]));
      c.v_outliers.index.push_back(static_cast<int32_t>(i + 1 < tokens * channels ? i + 1 : i));
      c.v_outliers.value.push_back(float_to_half(-2.0f));
    }
  }
  if (l.exact_k) c.k_f32 = k;
  return c;
}

// q [q_heads, d]: N(0, 1) scaled so the scores spread over several units (a peaked softmax).
std::vector<float> make_query(int64_t q_heads, int64_t d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> q(static_cast<size_t>(q_heads * d));
  for (float& x : q) x = normal(rng) * 0.5f;
  return q;
}

// "" when got is within docs/spec.md §7's fp32 tolerance (1e-3 of max |o|) of the fp64 oracle.
std::string tolerance_diff(std::span<const double> oracle, std::span<const float> got,
                           const std::string& what) {
  const Comparison c = compare_tolerance(oracle, got, 1e-3);
  if (c.passed()) return "";
  return what + ": max rel error " + std::to_string(c.max_rel_error) + ", first at " +
         std::to_string(c.first_mismatch) + " expected " + c.expected + " got " + c.got;
}

std::vector<CacheLayout> cache_layouts() {
  std::vector<CacheLayout> out;
  for (int bits : {2, 4, 8})
    for (Axis axis : {Axis::Token, Axis::Channel})
      for (bool extras : {false, true}) {
        CacheLayout l;
        l.bits = bits;
        l.axis = axis;
        l.kept = l.outliers = extras;
        out.push_back(l);
      }
  CacheLayout rotatekv;  // RotateKV: grouped rotation + reorder of pre-RoPE K, V per-head FWHT
  rotatekv.k_rotation = KeyRotation::GroupedHadamard;
  rotatekv.k_pre_rope = rotatekv.v_hadamard = rotatekv.kept = true;
  out.push_back(rotatekv);
  CacheLayout akvq;  // AKVQ-VL: per-head FWHT of post-RoPE K and of V
  akvq.k_rotation = KeyRotation::PerHeadHadamard;
  akvq.v_hadamard = akvq.outliers = true;
  akvq.bits = 4;
  out.push_back(akvq);
  CacheLayout kvquant;  // KVQuant: pre-RoPE per-channel K with outliers, integer zero point
  kvquant.axis = Axis::Channel;
  kvquant.k_pre_rope = kvquant.outliers = kvquant.kept = true;
  kvquant.zero_point = ZeroPoint::Int;
  kvquant.bits = 3;
  out.push_back(kvquant);
  CacheLayout exact;  // the fp32 baseline's K with a quantized V
  exact.exact_k = true;
  out.push_back(exact);
  return out;
}

TEST_CASE("avx: attention_decode is within docs/spec.md §7 tolerance of the fp64 oracle") {
  for (const Isa& isa : isas()) REQUIRE(isa.backend->supports(Op::AttentionDecode));
  for (int64_t d : {64, 128})
    for (int64_t tokens : {1, 7, 4099}) {
      const KvShape shape{tokens, 2, d};
      const int64_t q_heads = 4 * shape.heads;  // grouped-query attention
      const std::vector<float> q = make_query(q_heads, d, 5);
      for (const CacheLayout& l : cache_layouts()) {
        if (tokens == 4099 && d == 64 && l.bits != 2) continue;  // keeps the run short
        const DecodeCache c = make_cache(shape, l, 11);
        const std::vector<double> oracle = attention_decode_oracle(q, q_heads, c);
        for (const Isa& isa : isas()) {
          const std::string what =
              isa.name + " T" + std::to_string(tokens) + " d" + std::to_string(d) + " " + l.name();
          REQUIRE(tolerance_diff(oracle, isa.backend->attention_decode(q, q_heads, c), what) == "");
        }
      }
    }
}

TEST_CASE("avx: attention_decode does not depend on the OpenMP thread count (1 vs 2)") {
  const KvShape shape{4099, 2, 128};
  CacheLayout l;
  l.kept = l.outliers = true;
  l.k_rotation = KeyRotation::GroupedHadamard;
  l.k_pre_rope = true;
  const DecodeCache c = make_cache(shape, l, 3);
  const std::vector<float> q = make_query(8, 128, 4);
  for (const Isa& isa : isas()) {
    omp_set_num_threads(1);
    const std::vector<float> one = isa.backend->attention_decode(q, 8, c);
    omp_set_num_threads(2);
    const std::vector<float> two = isa.backend->attention_decode(q, 8, c);
    REQUIRE(bitwise_diff(one, two, isa.name + " attention threads 1 vs 2") == "");
  }
}

// A cache in the shape the code path of backends/avx/attention_codes.h reads: `sinks` fp16 tokens
// at the start and one in the middle (K and V), the rest in two quantized parts of contiguous
// rows (before the middle sink at `bits`, after it at 8 bits: AKVQ-VL's two widths), group G,
// optionally the per-head Hadamard on K and V (AKVQ-VL).
DecodeCache make_code_cache(const KvShape& shape, int bits, int64_t group, bool hadamard,
                            int64_t sinks, uint32_t seed) {
  const int64_t tokens = shape.tokens, channels = shape.channels();
  std::vector<float> k = make_data(tokens, channels, seed);
  std::vector<float> v = make_data(tokens, channels, seed + 1);
  for (float& x : k) x *= 0.05f;
  for (float& x : v) x *= 0.25f;
  if (tokens > 3)  // K's massive token would take all attention: the quantized tokens must count
    for (int64_t ch = 0; ch < channels; ++ch) k[static_cast<size_t>(3 * channels + ch)] *= 0.01f;
  DecodeCache c;
  c.shape = shape;
  c.k_rotation = hadamard ? KeyRotation::PerHeadHadamard : KeyRotation::None;
  c.v_per_head_hadamard = hadamard;
  const std::vector<float> ks = hadamard ? rotate_v(k, shape) : k;
  const std::vector<float> vs = hadamard ? rotate_v(v, shape) : v;
  c.kept.assign(static_cast<size_t>(tokens), 0);
  for (int64_t t = 0; t < sinks && t < tokens; ++t) c.kept[static_cast<size_t>(t)] = 1;
  if (sinks > 0) c.kept[static_cast<size_t>(tokens / 2)] = 1;
  for (float x : k) c.k_fp16.push_back(float_to_half(x));
  for (float x : v) c.v_fp16.push_back(float_to_half(x));
  for (int half = 0; half < 2; ++half) {
    QuantParams qp;
    qp.bits = half ? 8 : bits;
    qp.group = group;
    add_quantized_part(c, ks, vs, qp, [&](int64_t t) { return (t >= tokens / 2) == (half == 1); });
  }
  return c;
}

TEST_CASE("avx: attention_decode on codes is within tolerance and independent of the thread count") {
  // Every code width and a group smaller than, equal to and larger than a head; sinks (kept
  // fp16 rows) and a middle kept token splitting the runs; odd token counts leave K tails.
  struct Case {
    int64_t tokens, d;
    int bits;
    int64_t group;
    bool hadamard;
    int64_t sinks;
  };
  const Case cases[] = {
      {4099, 128, 2, 128, false, 4}, {4099, 128, 2, 64, true, 4},  {4099, 128, 4, 256, true, 1},
      {1029, 128, 1, 128, false, 4}, {1029, 128, 8, 128, true, 0}, {1029, 64, 2, 128, false, 4},
      {1029, 64, 4, 64, true, 2},    {37, 128, 2, 128, true, 4},   {300, 256, 2, 64, false, 3},
  };
  const int restore = omp_get_max_threads();
  for (const Case& k : cases) {
    const KvShape shape{k.tokens, 4, k.d};
    const int64_t q_heads = 4 * shape.heads;
    const DecodeCache c = make_code_cache(shape, k.bits, k.group, k.hadamard, k.sinks, 7);
    const std::vector<float> q = make_query(q_heads, k.d, 9);
    const std::vector<double> oracle = attention_decode_oracle(q, q_heads, c);
    for (const Isa& isa : isas()) {
      const std::string what = isa.name + " T" + std::to_string(k.tokens) + " d" +
                               std::to_string(k.d) + " b" + std::to_string(k.bits) + " G" +
                               std::to_string(k.group) + (k.hadamard ? " hadamard" : "") +
                               " sinks" + std::to_string(k.sinks);
      omp_set_num_threads(1);
      const std::vector<float> one = isa.backend->attention_decode(q, q_heads, c);
      REQUIRE(tolerance_diff(oracle, one, what) == "");
      for (int threads : {2, 3}) {
        omp_set_num_threads(threads);
        REQUIRE(bitwise_diff(one, isa.backend->attention_decode(q, q_heads, c),
                             what + " threads 1 vs " + std::to_string(threads)) == "");
      }
    }
  }
  omp_set_num_threads(restore);
}

TEST_CASE("avx: attention_decode rejects invalid caches with the reference's error") {
  const KvShape shape{7, 2, 64};
  CacheLayout l;
  l.kept = true;
  const DecodeCache good = make_cache(shape, l, 1);
  const std::vector<float> q = make_query(8, 64, 2);
  std::vector<DecodeCache> bad(6, good);
  bad[0].k_parts[0].tokens[0] = 7;                            // token outside the cache
  bad[1].v_parts[1].tokens[0] = bad[1].v_parts[0].tokens[0];  // a token quantized twice
  bad[2].kept[0] = 0;                                         // neither kept nor quantized
  bad[3].k_fp16.pop_back();                                   // kept rows too short
  bad[4].v_outliers.index = {1000000};                        // outlier outside the cache
  bad[4].v_outliers.value = {0};
  bad[5].k_fp16[3] = 0x7C00;  // an inf in a kept row
  for (size_t i = 0; i < bad.size(); ++i) {
    std::string expected;
    try {
      ref().attention_decode(q, 8, bad[i]);
    } catch (const Error& e) {
      expected = e.what();
    }
    REQUIRE(expected != "");
    for (const Isa& isa : isas())
      REQUIRE_THROWS_WITH(isa.backend->attention_decode(q, 8, bad[i]), expected);
  }
  std::vector<float> nan_q = q;
  nan_q[5] = std::nanf("");
  for (const Isa& isa : isas()) {
    REQUIRE_THROWS_WITH(isa.backend->attention_decode(q, 3, good),
                        "attention_decode: q_heads (3) must be a positive multiple of the KV "
                        "heads (2)");
    REQUIRE_THROWS_AS(isa.backend->attention_decode(nan_q, 8, good), Error);
    DecodeCache no_heads;
    REQUIRE_THROWS_AS(isa.backend->attention_decode(q, 8, no_heads), Error);
  }
}

TEST_CASE("avx: KVQ_MAX_ISA=avx2 makes avx512 unavailable with the reason") {
  setenv("KVQ_MAX_ISA", "avx2", 1);
  const std::vector<BackendEntry> entries = avx_backend_entries();
  unsetenv("KVQ_MAX_ISA");
  REQUIRE(entries.size() == 2);
  REQUIRE(entries[0].name == "avx512");
  REQUIRE_FALSE(entries[0].available);
  if (avx_kernels_for("avx512")) {
    REQUIRE(entries[0].detail.find("capped by KVQ_MAX_ISA") != std::string::npos);
  } else {
    REQUIRE(entries[0].detail.find("missing:") != std::string::npos);
  }
  REQUIRE(entries[1].available == (avx_kernels_for("avx2") != nullptr));
}

}  // namespace
}  // namespace kvq
