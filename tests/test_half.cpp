// reference/half.h against independent oracles: the IEEE binary16/bfloat16 value formulas
// (ldexp), a nearest-value search with ties to even, and hand-picked bit patterns.
#include <algorithm>
#include <bit>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "reference/half.h"

namespace {

// binary16 value from its fields, computed in double (exact for every pattern).
double half_value(uint16_t h) {
  const int sign = (h >> 15) ? -1 : 1;
  const int exp = (h >> 10) & 0x1F;
  const int man = h & 0x3FF;
  if (exp == 0x1F)
    return man ? std::numeric_limits<double>::quiet_NaN()
               : sign * std::numeric_limits<double>::infinity();
  if (exp == 0) return sign * std::ldexp(man, -24);
  return sign * std::ldexp(1024 + man, exp - 25);
}

double bf16_value(uint16_t b) {
  const int sign = (b >> 15) ? -1 : 1;
  const int exp = (b >> 7) & 0xFF;
  const int man = b & 0x7F;
  if (exp == 0xFF)
    return man ? std::numeric_limits<double>::quiet_NaN()
               : sign * std::numeric_limits<double>::infinity();
  if (exp == 0) return sign * std::ldexp(man, -133);
  return sign * std::ldexp(128 + man, exp - 134);
}

// Nearest binary16 to a finite float by search over the sorted non-negative finite halves, ties
// to the even pattern; beyond the overflow threshold (65504 + half an ulp = 65520) it is inf.
uint16_t oracle_float_to_half(float f) {
  static const std::vector<double> values = [] {
    std::vector<double> v;
    for (uint32_t h = 0; h < 0x7C00; ++h) v.push_back(half_value(static_cast<uint16_t>(h)));
    return v;
  }();
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 65520.0) return sign | 0x7C00;
  const auto it = std::lower_bound(values.begin(), values.end(), a);
  if (it == values.end()) return sign | 0x7BFF;  // in (65504, 65520): the largest finite half
  auto hi = static_cast<uint16_t>(it - values.begin());
  if (hi < values.size() && values[hi] == a) return sign | hi;
  const auto lo = static_cast<uint16_t>(hi - 1);
  const double dlo = a - values[lo], dhi = values[hi] - a;
  if (dlo < dhi) return sign | lo;
  if (dhi < dlo) return sign | hi;
  return sign | ((lo & 1) ? hi : lo);
}

uint32_t bits(float f) {
  return std::bit_cast<uint32_t>(f);
}

}  // namespace

TEST_CASE("half: every fp16 pattern widens to its IEEE value") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const double expected = half_value(static_cast<uint16_t>(h));
    const float got = kvq::half_to_float(static_cast<uint16_t>(h));
    INFO("pattern " << h);
    if (std::isnan(expected)) {
      REQUIRE(std::isnan(got));
    } else {
      REQUIRE(static_cast<double>(got) == expected);
      REQUIRE(std::signbit(got) == static_cast<bool>(h & 0x8000));  // -0 stays -0
    }
  }
}

TEST_CASE("half: every fp16 pattern round-trips through fp32 exactly (NaN stays NaN)") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const auto p = static_cast<uint16_t>(h);
    const uint16_t back = kvq::float_to_half(kvq::half_to_float(p));
    INFO("pattern " << h);
    if ((p & 0x7C00) == 0x7C00 && (p & 0x3FF)) {
      REQUIRE((back & 0x7C00) == 0x7C00);
      REQUIRE((back & 0x3FF) != 0);
      REQUIRE((back & 0x8000) == (p & 0x8000));
    } else {
      REQUIRE(back == p);
    }
  }
}

TEST_CASE(
    "half: fp32 to fp16 at every midpoint and its neighbours matches the nearest-even "
    "oracle") {
  // The midpoint between consecutive halves (normal and subnormal) is exact in fp32; it and the
  // floats just below and above it decide every rounding boundary.
  for (uint32_t h = 0; h < 0x7BFF; ++h) {
    const double mid =
        0.5 * (half_value(static_cast<uint16_t>(h)) + half_value(static_cast<uint16_t>(h + 1)));
    const auto m = static_cast<float>(mid);
    REQUIRE(static_cast<double>(m) == mid);
    for (float f : {m, std::nextafter(m, 0.0f), std::nextafter(m, 1e9f)}) {
      INFO("float bits " << bits(f));
      REQUIRE(kvq::float_to_half(f) == oracle_float_to_half(f));
      REQUIRE(kvq::float_to_half(-f) == oracle_float_to_half(-f));
    }
  }
}

TEST_CASE("half: fp32 to fp16 on a sweep of float patterns matches the nearest-even oracle") {
  for (uint64_t p = 0; p < 0x100000000ull; p += 4099) {
    const float f = std::bit_cast<float>(static_cast<uint32_t>(p));
    if (!std::isfinite(f)) continue;
    INFO("float bits " << p);
    REQUIRE(kvq::float_to_half(f) == oracle_float_to_half(f));
  }
}

TEST_CASE("half: hand-picked ties round to even, overflow gives inf, subnormals are kept") {
  using kvq::float_to_half;
  CHECK(float_to_half(1.0f) == 0x3C00);
  CHECK(float_to_half(1.0f + 0x1p-11f) == 0x3C00);             // tie between 1 and 1+2^-10: even
  CHECK(float_to_half(1.0f + 3 * 0x1p-11f) == 0x3C02);         // tie, rounds up to even
  CHECK(float_to_half(1.0f + 0x1p-11f + 0x1p-20f) == 0x3C01);  // just above the tie
  CHECK(float_to_half(-2.0f) == 0xC000);
  CHECK(float_to_half(65504.0f) == 0x7BFF);  // largest finite half
  CHECK(float_to_half(65519.99f) == 0x7BFF);
  CHECK(float_to_half(65520.0f) == 0x7C00);  // tie with 65536: overflow to inf
  CHECK(float_to_half(-1e10f) == 0xFC00);
  CHECK(float_to_half(std::numeric_limits<float>::infinity()) == 0x7C00);
  CHECK(float_to_half(-std::numeric_limits<float>::infinity()) == 0xFC00);
  const uint16_t nan = float_to_half(std::numeric_limits<float>::quiet_NaN());
  CHECK((nan & 0x7C00) == 0x7C00);
  CHECK((nan & 0x3FF) != 0);
  CHECK(float_to_half(0x1p-14f) == 0x0400);             // smallest normal
  CHECK(float_to_half(0x1p-14f - 0x1p-25f) == 0x0400);  // tie 0x3FF/0x400: even
  CHECK(float_to_half(0x1p-24f) == 0x0001);             // smallest subnormal
  CHECK(float_to_half(0x1p-25f) == 0x0000);             // tie 0/1: even
  CHECK(float_to_half(std::nextafter(0x1p-25f, 1.0f)) == 0x0001);
  CHECK(float_to_half(3 * 0x1p-25f) == 0x0002);  // tie 1/2: even
  CHECK(float_to_half(5 * 0x1p-25f) == 0x0002);  // tie 2/3: even
  CHECK(float_to_half(-0x1p-30f) == 0x8000);     // underflow keeps the sign
  CHECK(kvq::half_to_float(0x0001) == 0x1p-24f);
  CHECK(kvq::half_to_float(0x03FF) == 1023 * 0x1p-24f);
  CHECK(kvq::round_to_half(0.1f) == 0.0999755859375f);
}

TEST_CASE("bf16: every pattern widens exactly and round-trips (NaN stays NaN)") {
  for (uint32_t b = 0; b < 65536; ++b) {
    const auto p = static_cast<uint16_t>(b);
    const double expected = bf16_value(p);
    const float got = kvq::bf16_to_float(p);
    INFO("pattern " << b);
    if (std::isnan(expected)) {
      REQUIRE(std::isnan(got));
      REQUIRE(std::isnan(kvq::bf16_to_float(kvq::float_to_bf16(got))));
    } else {
      REQUIRE(static_cast<double>(got) == expected);
      REQUIRE(kvq::float_to_bf16(got) == p);
    }
  }
}

TEST_CASE("bf16: fp32 to bf16 rounds to nearest even at every midpoint") {
  // The midpoint between bf16 patterns p and p+1 (same sign, finite) is the float p<<16 | 0x8000.
  for (uint32_t p = 0; p < 0x7F7F; p += 3) {
    const float mid = std::bit_cast<float>((p << 16) | 0x8000u);
    const uint16_t even = (p & 1) ? static_cast<uint16_t>(p + 1) : static_cast<uint16_t>(p);
    INFO("bf16 pattern " << p);
    REQUIRE(kvq::float_to_bf16(mid) == even);
    REQUIRE(kvq::float_to_bf16(std::nextafter(mid, 0.0f)) == p);
    REQUIRE(kvq::float_to_bf16(std::nextafter(mid, std::numeric_limits<float>::infinity())) ==
            p + 1);
  }
  CHECK(kvq::float_to_bf16(1.0f + 0x1p-8f) == 0x3F80);                     // tie: even
  CHECK(kvq::float_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3F82);                 // tie: up to even
  CHECK(kvq::float_to_bf16(std::numeric_limits<float>::max()) == 0x7F80);  // overflow: inf
  CHECK(kvq::float_to_bf16(-std::numeric_limits<float>::infinity()) == 0xFF80);
  CHECK(kvq::float_to_bf16(0x1p-133f) == 0x0001);  // smallest bf16 subnormal
}
