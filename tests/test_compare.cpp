#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <vector>

#include "reference/error.h"
#include "reference/half.h"
#include "verify/compare.h"

using Catch::Matchers::Contains;

namespace {
constexpr float kInf = std::numeric_limits<float>::infinity();
}

TEST_CASE("compare: first mismatch index and values are reported") {
  const std::vector<float> expected = {1.0f, 2.0f, 3.0f, 4.0f, 5.0f};
  const std::vector<float> got = {1.0f, 2.0f, 5.0f, 4.0f, 6.0f};
  const kvq::Comparison c = kvq::compare_bitwise(expected, got);
  CHECK(c.count == 5);
  CHECK(c.mismatches == 2);
  CHECK(c.first_mismatch == 2);
  CHECK(c.where == "values");
  CHECK(c.expected == "0x1.8p+1 (3)");
  CHECK(c.got == "0x1.4p+2 (5)");
  CHECK_FALSE(c.passed());
  // max ULP: 3 -> 4 is 2^22 steps of 2^-22, 4 -> 5 is 2^21 steps of 2^-21.
  CHECK(c.max_ulp == static_cast<double>((1 << 22) + (1 << 21)));
  // NMSE: (2^2 + 1^2) / (1 + 4 + 9 + 16 + 25) = 5 / 55.
  CHECK(c.nmse == 5.0 / 55.0);
  CHECK(c.max_rel_error == 2.0 / 5.0);
}

TEST_CASE("compare: identical values pass with zero error") {
  const std::vector<float> v = {0.5f, -3.25f, 1e-40f};
  const kvq::Comparison c = kvq::compare_bitwise(v, v);
  CHECK(c.passed());
  CHECK(c.first_mismatch == -1);
  CHECK(c.max_ulp == 0.0);
  CHECK(c.nmse == 0.0);
}

TEST_CASE("compare: -0 and +0 differ bitwise, NaN never equals itself") {
  const std::vector<float> pz = {0.0f}, nz = {-0.0f};
  CHECK(kvq::compare_bitwise(pz, nz).mismatches == 1);
  CHECK(kvq::ulp_distance(0.0f, -0.0f) == 0.0);
  const std::vector<float> nan = {std::numeric_limits<float>::quiet_NaN()};
  const kvq::Comparison c = kvq::compare_bitwise(nan, nan);
  CHECK(c.mismatches == 1);
  CHECK(std::isinf(c.nmse));
}

TEST_CASE("compare: ULP distance of adjacent floats is 1") {
  CHECK(kvq::ulp_distance(1.0f, std::nextafter(1.0f, 2.0f)) == 1.0);
  CHECK(kvq::ulp_distance(std::nextafter(1.0f, 0.0f), 1.0f) == 1.0);
  const float tiny = std::numeric_limits<float>::denorm_min();
  CHECK(kvq::ulp_distance(0.0f, tiny) == 1.0);
  CHECK(kvq::ulp_distance(-0.0f, tiny) == 1.0);
  CHECK(kvq::ulp_distance(-tiny, tiny) == 2.0);
  CHECK(kvq::ulp_distance(1.0f, 2.0f) == static_cast<double>(1 << 23));
  CHECK(kvq::ulp_distance(-1.0f, 1.0f) == 2.0 * 0x3F800000);
  CHECK(std::isinf(kvq::ulp_distance(std::numeric_limits<float>::max(), kInf)));
  CHECK(kvq::ulp_distance(kInf, kInf) == 0.0);
}

TEST_CASE("compare: NMSE worked example and edge cases") {
  const std::vector<float> e = {3.0f, 4.0f}, g = {3.0f, 5.0f};
  CHECK(kvq::nmse(e, g) == 1.0 / 25.0);
  const std::vector<float> zeros = {0.0f, 0.0f};
  CHECK(kvq::nmse(zeros, zeros) == 0.0);
  CHECK(std::isinf(kvq::nmse(zeros, g)));
  const std::vector<float> with_inf = {3.0f, kInf};
  CHECK(std::isinf(kvq::nmse(e, with_inf)));
  const std::vector<float> one = {1.0f};
  REQUIRE_THROWS_AS(kvq::nmse(e, one), kvq::Error);
}

TEST_CASE("compare: different lengths are a shape mismatch") {
  const std::vector<float> a = {1.0f, 2.0f}, b = {1.0f};
  const kvq::Comparison c = kvq::compare_bitwise(a, b);
  CHECK(c.shape_mismatch);
  CHECK_FALSE(c.passed());
  CHECK(c.expected == "2 elements");
  CHECK(c.got == "1 elements");
}

TEST_CASE("compare: integer, byte and fp16 comparisons locate the first difference") {
  const std::vector<uint8_t> b1 = {1, 2, 3}, b2 = {1, 9, 3};
  const kvq::Comparison cb = kvq::compare_bytes(b1, b2);
  CHECK(cb.first_mismatch == 1);
  CHECK(cb.expected == "2");
  CHECK(cb.got == "9");
  const std::vector<int32_t> i1 = {-5, 7}, i2 = {-5, -7};
  CHECK(kvq::compare_i32(i1, i2).got == "-7");
  const std::vector<uint16_t> h1 = {0x3C00, 0x4000}, h2 = {0x3C00, 0xC000};
  const kvq::Comparison ch = kvq::compare_u16(h1, h2);
  CHECK(ch.first_mismatch == 1);
  CHECK(ch.expected == "0x4000 (2 as fp16)");
  CHECK(ch.got == "0xc000 (-2 as fp16)");
  CHECK(kvq::compare_i32(i1, i1).passed());
}

TEST_CASE("compare: tolerance gate passes at the bound and fails above it") {
  const std::vector<double> oracle = {1.0, -2.0, 0.5};
  const std::vector<float> got = {1.001f, -2.0f, 0.5f};
  const double rel = (static_cast<double>(1.001f) - 1.0) / 2.0;  // max|oracle| = 2
  const kvq::Comparison loose = kvq::compare_tolerance(oracle, got, 1e-3);
  CHECK(loose.passed());
  CHECK(loose.max_rel_error == rel);
  const kvq::Comparison tight = kvq::compare_tolerance(oracle, got, 1e-4);
  CHECK_FALSE(tight.passed());
  CHECK(tight.mismatches == 1);
  CHECK(tight.first_mismatch == 0);
  // Exactly at the tolerance passes (<=): |2.5 - 2| / 2 = 0.25.
  const std::vector<double> two = {2.0};
  const std::vector<float> two_and_half = {2.5f};
  CHECK(kvq::compare_tolerance(two, two_and_half, 0.25).passed());
  CHECK_FALSE(kvq::compare_tolerance(two, two_and_half, 0.2499).passed());
  // Non-finite output fails whatever the tolerance.
  const std::vector<float> nan = {std::numeric_limits<float>::quiet_NaN()};
  const kvq::Comparison c = kvq::compare_tolerance(two, nan, 1e9);
  CHECK_FALSE(c.passed());
  CHECK(std::isinf(c.nmse));
  CHECK(kvq::compare_tolerance(two, std::vector<float>{}, 1.0).shape_mismatch);
}

TEST_CASE("compare: quantized outputs name the first differing part") {
  kvq::Quantized q;
  q.rows = 1;
  q.cols = 4;
  q.params.bits = 2;
  q.params.group = 4;
  q.codes = {0xE4};  // codes 0, 1, 2, 3 (code i at bits 2i)
  q.scale = {kvq::float_to_half(0.5f)};
  q.zero = {kvq::float_to_half(-1.0f)};
  CHECK(kvq::compare_quantized(q, q).passed());

  kvq::Quantized code = q;
  code.codes = {0xE5};  // code 0 becomes 1
  const kvq::Comparison cc = kvq::compare_quantized(q, code);
  CHECK(cc.where == "codes");
  CHECK(cc.first_mismatch == 0);
  // The dequantized values differ too (x = q * 0.5 - 1: -1 vs -0.5 at element 0).
  CHECK(cc.mismatches == 2);
  CHECK(cc.max_ulp > 0.0);

  kvq::Quantized scale = q;
  scale.scale = {kvq::float_to_half(0.25f)};
  const kvq::Comparison cs = kvq::compare_quantized(q, scale);
  CHECK(cs.where == "scale");
  CHECK_THAT(cs.expected, Contains("0.5 as fp16"));

  kvq::Quantized zero = q;
  zero.zero = {kvq::float_to_half(-0.0f)};
  CHECK(kvq::compare_quantized(q, zero).where == "zero");

  kvq::Quantized params = q;
  params.params.bits = 4;
  const kvq::Comparison cp = kvq::compare_quantized(q, params);
  CHECK(cp.shape_mismatch);
  CHECK(cp.where == "params");

  kvq::Quantized shape = q;
  shape.cols = 8;
  CHECK(kvq::compare_quantized(q, shape).where == "shape");

  kvq::Quantized short_codes = q;
  short_codes.codes.clear();
  const kvq::Comparison cl = kvq::compare_quantized(q, short_codes);
  CHECK(cl.shape_mismatch);
  CHECK(cl.where == "codes");
}
