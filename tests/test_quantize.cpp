// reference/quantize (docs/spec.md §3): hand-worked groups with exact bits for every b, packing bit
// positions, group layout on both axes with tails, a per-group oracle, the round-trip bound and
// the input errors. Hand-worked values were derived by hand with fp32/fp16 rounding written out
// (Python struct 'f'/'e' as the calculator).
#include <omp.h>

#include <algorithm>
#include <bit>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "reference/error.h"
#include "reference/half.h"
#include "reference/quantize.h"

namespace {

using kvq::Axis;
using kvq::Quantized;
using kvq::QuantParams;
using kvq::ZeroPoint;

// One group: a 1 x n row, G = n, token axis.
Quantized quantize_row(const std::vector<float>& x, int bits, float clip = 1.0f,
                       ZeroPoint zp = ZeroPoint::Float) {
  QuantParams p;
  p.bits = bits;
  p.group = static_cast<int64_t>(x.size());
  p.clip = clip;
  p.zero_point = zp;
  return kvq::quantize(x, 1, static_cast<int64_t>(x.size()), p);
}

std::vector<uint32_t> bits_of(const std::vector<float>& v) {
  std::vector<uint32_t> out;
  for (float f : v) out.push_back(std::bit_cast<uint32_t>(f));
  return out;
}

std::vector<uint8_t> codes_of(const Quantized& q) {
  return kvq::unpack_all(q);
}

std::vector<float> random_values(size_t count, uint32_t seed, float spread = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, spread);
  std::vector<float> x(count);
  for (float& v : x) v = dist(rng);
  return x;
}

// Bit m of the little-endian stream: bit (m % 8) of byte m / 8.
int stream_bit(const std::vector<uint8_t>& bytes, int64_t m) {
  return (bytes[m / 8] >> (m % 8)) & 1;
}

}  // namespace

TEST_CASE("quantize: 1-bit group, 0.5 ties to even") {
  // lo = -1, hi = 1: s = 2/1 = 2 (0x4000), z = -1 (0xBC00); t = [0, 1, 1.2, 2],
  // u = [0, 0.5, 0.6, 1] -> [0, 0 (tie, even), 1, 1].
  const Quantized q = quantize_row({-1.0f, 0.0f, 0.2f, 1.0f}, 1);
  CHECK(q.scale == std::vector<uint16_t>{0x4000});
  CHECK(q.zero == std::vector<uint16_t>{0xBC00});
  CHECK(q.codes == std::vector<uint8_t>{0x0C});  // code k at bit k: 0b1100
  CHECK(kvq::dequantize(q) == std::vector<float>{-1.0f, -1.0f, 1.0f, 1.0f});
}

TEST_CASE("quantize: 2-bit tie rounds to even") {
  // lo = 0, hi = 3: s = 1, z = 0; u = [0, 0.5, 1.5, 2.5, 3] -> [0, 0, 2, 2, 3].
  const Quantized q = quantize_row({0.0f, 0.5f, 1.5f, 2.5f, 3.0f}, 2);
  CHECK(q.scale == std::vector<uint16_t>{0x3C00});
  CHECK(q.zero == std::vector<uint16_t>{0x0000});
  CHECK(codes_of(q) == std::vector<uint8_t>{0, 0, 2, 2, 3});
  // 5 codes: byte 0 = 0 | 0<<2 | 2<<4 | 2<<6 = 0xA0, byte 1 = 3 with zero padding.
  CHECK(q.codes == std::vector<uint8_t>{0xA0, 0x03});
  CHECK(kvq::dequantize(q) == std::vector<float>{0.0f, 0.0f, 2.0f, 2.0f, 3.0f});
}

TEST_CASE("quantize: 2-bit group whose scale rounds in fp16") {
  // hi - lo = 0.3f; 0.3f / 3 = 0.1f (0x3DCCCCCD) -> fp16 0x2E66 = 0.0999755859375.
  const Quantized q = quantize_row({0.0f, 0.1f, 0.2f, 0.3f}, 2);
  CHECK(q.scale == std::vector<uint16_t>{0x2E66});
  CHECK(q.zero == std::vector<uint16_t>{0x0000});
  CHECK(q.codes == std::vector<uint8_t>{0xE4});  // codes 0, 1, 2, 3
  CHECK(bits_of(kvq::dequantize(q)) ==
        std::vector<uint32_t>{0x00000000, 0x3DCCC000, 0x3E4CC000, 0x3E999000});
}

TEST_CASE("quantize: 2-bit group with clip ratio 0.8 clamps at both ends") {
  // lo = -5 * 0.8 = -4, hi = 4; 8/3 = 0x402AAAAB -> fp16 0x4155 = 2.666015625; z = -4.
  // t = [-1, 3, 4, 5, 9] -> u = [-0.375, 1.125, 1.5004, 1.875, 3.376] -> [0, 1, 2, 2, 3].
  const Quantized q = quantize_row({-5.0f, -1.0f, 0.0f, 1.0f, 5.0f}, 2, 0.8f);
  CHECK(q.scale == std::vector<uint16_t>{0x4155});
  CHECK(q.zero == std::vector<uint16_t>{0xC400});
  CHECK(codes_of(q) == std::vector<uint8_t>{0, 1, 2, 2, 3});
  CHECK(bits_of(kvq::dequantize(q)) ==
        std::vector<uint32_t>{0xC0800000, 0xBFAAC000, 0x3FAA8000, 0x3FAA8000, 0x407FE000});
}

TEST_CASE("quantize: 3-bit group whose fp16 zero rounds above the min clamps to code 0") {
  // lo = -0.1f, fp16(lo) = -0.0999755859375 (0xAE66) > lo; (0.2f + 0.1f) / 7 = 0x3D2F8AF9 ->
  // fp16 0x297C = 0.0428466796875. Element 0: t = -2.4e-5, u = -0.00057 -> -0 -> 0;
  // 0.05: u = 3.5 + 0.0004 -> 4; 0.2: u = 6.9997 -> 7. Stream: 0 | 4<<3 | 7<<6 = 0x1E0.
  const Quantized q = quantize_row({-0.1f, 0.05f, 0.2f}, 3);
  CHECK(q.scale == std::vector<uint16_t>{0x297C});
  CHECK(q.zero == std::vector<uint16_t>{0xAE66});
  CHECK(q.codes == std::vector<uint8_t>{0xE0, 0x01});
  CHECK(bits_of(kvq::dequantize(q)) == std::vector<uint32_t>{0xBDCCC000, 0x3D924000, 0x3E4CC000});
}

TEST_CASE("quantize: 3-bit codes 0..7 cross byte boundaries") {
  // s = 7/7 = 1, z = 0: codes = [0..7]; sum(i << 3i) = 0xFAC688 -> bytes 88 C6 FA.
  const Quantized q = quantize_row({0, 1, 2, 3, 4, 5, 6, 7}, 3);
  CHECK(q.codes == std::vector<uint8_t>{0x88, 0xC6, 0xFA});
  CHECK(kvq::dequantize(q) == std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7});
}

TEST_CASE("quantize: 4-bit group, ties to even") {
  // s = 15/15 = 1, z = -1: t = [0, 1, 2.5, 3.5, 15] -> [0, 1, 2, 4, 15].
  const Quantized q = quantize_row({-1.0f, 0.0f, 1.5f, 2.5f, 14.0f}, 4);
  CHECK(q.scale == std::vector<uint16_t>{0x3C00});
  CHECK(q.zero == std::vector<uint16_t>{0xBC00});
  CHECK(q.codes == std::vector<uint8_t>{0x10, 0x42, 0x0F});  // low nibble first
  CHECK(kvq::dequantize(q) == std::vector<float>{-1.0f, 0.0f, 1.0f, 3.0f, 14.0f});
}

TEST_CASE("quantize: 8-bit group whose fp16 zero rounds above the min clamps (u = -2 -> 0)") {
  // lo = -1000.2f, fp16(lo) = -1000 (0xE3D0) > lo; hi - lo = 25.5 exactly, 25.5/255 = 0.1f ->
  // 0x2E66. Element 0: t = -0.2000122, u = -2.0006 -> -2, clamped to 0; element 2:
  // t = 25.2999878, u = 253.06 -> 253.
  const Quantized q = quantize_row({-1000.2f, -1000.0f, -974.7f}, 8);
  CHECK(q.scale == std::vector<uint16_t>{0x2E66});
  CHECK(q.zero == std::vector<uint16_t>{0xE3D0});
  CHECK(q.codes == std::vector<uint8_t>{0, 0, 253});
  CHECK(bits_of(kvq::dequantize(q)) == std::vector<uint32_t>{0xC47A0000, 0xC47A0000, 0xC473AD32});
  // Ties: lo = -1, hi = 254, s = 1: t = [0, 1.5, 2.5, 255] -> [0, 2, 2, 255].
  CHECK(quantize_row({-1.0f, 0.5f, 1.5f, 254.0f}, 8).codes == std::vector<uint8_t>{0, 2, 2, 255});
}

TEST_CASE("quantize: constant group has s = 0, codes 0, and reconstructs as fp16(x)") {
  for (int b : {1, 2, 3, 4, 8}) {
    const Quantized q = quantize_row({0.1f, 0.1f, 0.1f}, b);
    INFO("bits " << b);
    CHECK(q.scale == std::vector<uint16_t>{0x0000});
    CHECK(q.zero == std::vector<uint16_t>{0x2E66});
    CHECK(codes_of(q) == std::vector<uint8_t>{0, 0, 0});
    CHECK(bits_of(kvq::dequantize(q)) == std::vector<uint32_t>(3, 0x3DCCC000));
  }
  // A range that underflows fp16 (below 2^-25) also gives s = 0 and codes 0.
  const Quantized tiny = quantize_row({1.0f, 1.0f + 0x1p-23f}, 8);
  CHECK(tiny.scale == std::vector<uint16_t>{0x0000});
  CHECK(codes_of(tiny) == std::vector<uint8_t>{0, 0});
}

TEST_CASE("quantize: packing puts 2-bit code 4j+k in bits 2k..2k+1 of byte j") {
  std::vector<uint8_t> packed(2, 0xFF);
  kvq::pack_codes(std::vector<uint8_t>{1, 2, 3, 0, 3, 3, 0, 1}, 2, packed);
  CHECK(packed == std::vector<uint8_t>{0x39, 0x4F});
  std::mt19937 rng(7);
  std::vector<uint8_t> codes(401);
  for (uint8_t& c : codes) c = static_cast<uint8_t>(rng() & 3);
  std::vector<uint8_t> out(101, 0xFF);
  kvq::pack_codes(codes, 2, out);
  for (size_t j = 0; j < out.size(); ++j)
    for (size_t k = 0; k < 4; ++k) {
      const size_t i = 4 * j + k;
      const int expected = i < codes.size() ? codes[i] : 0;  // zero bits pad the last byte
      REQUIRE(((out[j] >> (2 * k)) & 3) == expected);
    }
}

TEST_CASE("quantize: packing is a little-endian bitstream for every b (3 crosses bytes)") {
  std::vector<uint8_t> b3(2, 0);
  kvq::pack_codes(std::vector<uint8_t>{5, 3, 6}, 3, b3);
  // 5 at bits 0-2, 3 at bits 3-5, 6 at bits 6-8: byte 0 = 5 | 3<<3 | (6&3)<<6, byte 1 = 6>>2.
  CHECK(b3 == std::vector<uint8_t>{0x9D, 0x01});
  std::mt19937 rng(11);
  for (int b : {1, 2, 3, 4, 8}) {
    for (size_t n : {1u, 7u, 8u, 13u, 128u, 333u}) {
      std::vector<uint8_t> codes(n);
      for (uint8_t& c : codes) c = static_cast<uint8_t>(rng() & ((1u << b) - 1));
      std::vector<uint8_t> out((n * b + 7) / 8, 0xAA);
      kvq::pack_codes(codes, b, out);
      INFO("bits " << b << ", n " << n);
      for (size_t i = 0; i < n; ++i) {
        int value = 0;
        for (int m = 0; m < b; ++m) value |= stream_bit(out, static_cast<int64_t>(b * i + m)) << m;
        REQUIRE(value == codes[i]);
      }
      for (size_t m = n * b; m < out.size() * 8; ++m)
        REQUIRE(stream_bit(out, static_cast<int64_t>(m)) == 0);
      std::vector<uint8_t> back(n);
      kvq::unpack_codes(out, b, back);
      REQUIRE(back == codes);
    }
  }
  REQUIRE_THROWS_WITH(kvq::pack_codes(std::vector<uint8_t>{1, 8}, 3, b3),
                      Catch::Contains("index 1"));
  REQUIRE_THROWS_AS(kvq::pack_codes(std::vector<uint8_t>(9, 0), 2, b3), kvq::Error);
  std::vector<uint8_t> five(5);  // 5 codes of 4 bits need 3 bytes, b3 holds 2
  REQUIRE_THROWS_AS(kvq::unpack_codes(b3, 4, five), kvq::Error);
  REQUIRE_THROWS_AS(kvq::pack_codes(std::vector<uint8_t>{0}, 5, b3), kvq::Error);
}

TEST_CASE("quantize: token-axis layout, rows 7 x cols 200, G 128 (tail 72)") {
  QuantParams p;
  p.bits = 3;
  p.group = 128;
  p.axis = Axis::Token;
  const kvq::GroupLayout l = kvq::group_layout(7, 200, p);
  CHECK(l.group == 128);
  CHECK(l.groups_per_line == 2);
  CHECK(l.group_count == 14);
  CHECK(l.element_stride() == 1);
  for (int64_t i = 0; i < 14; ++i) {
    INFO("group " << i);
    CHECK(l.group_size(i) == (i % 2 ? 72 : 128));
    CHECK(l.first_element(i) == (i / 2) * 200 + (i % 2) * 128);
    CHECK(l.byte_offset(i) == (i / 2) * (48 + 27) + (i % 2) * 48);  // 128*3/8 = 48, 72*3/8 = 27
  }
  CHECK(l.total_bytes() == 7 * 75);
  CHECK(l.byte_offset(14) == l.total_bytes());
  REQUIRE_THROWS_AS(l.group_size(14), kvq::Error);
  REQUIRE_THROWS_AS(l.first_element(-1), kvq::Error);
  p.group = 1000;  // clamped to the 200 channels
  const kvq::GroupLayout wide = kvq::group_layout(7, 200, p);
  CHECK(wide.group == 200);
  CHECK(wide.group_count == 7);
  CHECK(wide.first_element(3) == 600);
}

TEST_CASE("quantize: channel-axis layout, rows 7 x cols 200, G 128 clamps to 7 rows") {
  QuantParams p;
  p.bits = 3;
  p.group = 128;
  p.axis = Axis::Channel;
  const kvq::GroupLayout l = kvq::group_layout(7, 200, p);
  CHECK(l.group == 7);
  CHECK(l.groups_per_line == 1);
  CHECK(l.group_count == 200);
  CHECK(l.element_stride() == 200);
  for (int64_t i = 0; i < 200; ++i) {
    CHECK(l.group_size(i) == 7);
    CHECK(l.first_element(i) == i);    // group i is column i
    CHECK(l.byte_offset(i) == 3 * i);  // 7*3 = 21 bits -> 3 bytes
  }
  CHECK(l.total_bytes() == 600);
}

TEST_CASE("quantize: channel-axis layout with a tail numbers groups in memory order") {
  // rows 300, cols 5, G 128: row blocks of 128, 128, 44; group i = block i/5 of column i%5,
  // first element (128 * (i/5)) * 5 + i%5.
  QuantParams p;
  p.bits = 2;
  p.group = 128;
  p.axis = Axis::Channel;
  const kvq::GroupLayout l = kvq::group_layout(300, 5, p);
  CHECK(l.groups_per_line == 3);
  CHECK(l.group_count == 15);
  for (int64_t i = 0; i < 15; ++i) {
    const int64_t rb = i / 5, c = i % 5;
    INFO("group " << i);
    CHECK(l.group_size(i) == (rb == 2 ? 44 : 128));
    CHECK(l.first_element(i) == rb * 128 * 5 + c);
    CHECK(l.byte_offset(i) == rb * 5 * 32 + c * (rb == 2 ? 11 : 32));
    if (i > 0) CHECK(l.first_element(i) > l.first_element(i - 1));
  }
  CHECK(l.total_bytes() == 2 * 160 + 5 * 11);
}

namespace {

// Independent per-group oracle: walks the group's (row, col) cells directly and applies
// docs/spec.md §3 one element at a time; returns codes [rows*cols], scale, zero, x_hat.
struct Oracle {
  std::vector<uint8_t> codes;
  std::vector<uint16_t> scale, zero;
  std::vector<float> x_hat;
};

Oracle oracle(const std::vector<float>& x, int64_t rows, int64_t cols, const QuantParams& p) {
  Oracle o;
  o.codes.assign(x.size(), 0);
  o.x_hat.assign(x.size(), 0.0f);
  const int64_t len = p.axis == Axis::Token ? cols : rows;
  const int64_t g = std::min(p.group, len);
  const int64_t blocks = (len + g - 1) / g;
  const float maxq = static_cast<float>((1 << p.bits) - 1);
  // Token-major group numbering: for the token axis row r's blocks; for the channel axis row
  // block rb's columns.
  const int64_t outer = p.axis == Axis::Token ? rows : blocks;
  const int64_t inner = p.axis == Axis::Token ? blocks : cols;
  for (int64_t a = 0; a < outer; ++a)
    for (int64_t b = 0; b < inner; ++b) {
      std::vector<int64_t> cells;
      if (p.axis == Axis::Token)
        for (int64_t c = b * g; c < std::min(cols, (b + 1) * g); ++c) cells.push_back(a * cols + c);
      else
        for (int64_t r = a * g; r < std::min(rows, (a + 1) * g); ++r) cells.push_back(r * cols + b);
      float lo = std::numeric_limits<float>::infinity(), hi = -lo;
      for (int64_t k : cells) lo = std::min(lo, x[k]), hi = std::max(hi, x[k]);
      lo *= p.clip;
      hi *= p.clip;
      const uint16_t s16 = kvq::float_to_half((hi - lo) / maxq);
      const uint16_t z16 = kvq::float_to_half(lo);
      const float s = kvq::half_to_float(s16), z = kvq::half_to_float(z16);
      o.scale.push_back(s16);
      o.zero.push_back(z16);
      for (int64_t k : cells) {
        float q = 0.0f;
        if (s != 0.0f) q = std::clamp(std::nearbyint((x[k] - z) / s), 0.0f, maxq);
        o.codes[k] = static_cast<uint8_t>(q);
        o.x_hat[k] = std::fma(q, s, z);
      }
    }
  return o;
}

}  // namespace

TEST_CASE("quantize: both axes with tails match the per-group oracle for every b") {
  struct Case {
    int64_t rows, cols, group;
    Axis axis;
  };
  const Case cases[] = {{7, 200, 128, Axis::Token},   {7, 200, 128, Axis::Channel},
                        {300, 5, 128, Axis::Channel}, {3, 1000, 64, Axis::Token},
                        {130, 33, 32, Axis::Channel}, {1, 1, 128, Axis::Token}};
  uint32_t seed = 1;
  for (const Case& c : cases)
    for (int b : {1, 2, 3, 4, 8}) {
      QuantParams p;
      p.bits = b;
      p.group = c.group;
      p.axis = c.axis;
      p.clip = b == 2 ? 0.8f : 1.0f;
      const std::vector<float> x = random_values(static_cast<size_t>(c.rows * c.cols), seed++);
      const Quantized q = kvq::quantize(x, c.rows, c.cols, p, "k");
      const Oracle o = oracle(x, c.rows, c.cols, p);
      INFO("rows " << c.rows << " cols " << c.cols << " G " << c.group << " axis "
                   << (c.axis == Axis::Token ? "token" : "channel") << " bits " << b);
      REQUIRE(q.scale == o.scale);
      REQUIRE(q.zero == o.zero);
      REQUIRE(q.zero_int.empty());
      REQUIRE(kvq::unpack_all(q) == o.codes);
      REQUIRE(bits_of(kvq::dequantize(q)) == bits_of(o.x_hat));
    }
}

TEST_CASE("quantize: round trip error is at most s/2 plus the fp16 rounding of z and s") {
  // |x - x_hat| <= s/2 inside the grid; clamping adds |z - lo| at the bottom (fp16(lo) above
  // lo) and (2^b - 1)|s - range| at the top (fp16 scale below the fp32 range); plus a few fp32
  // roundings of t, u and the fma.
  for (int b : {1, 2, 3, 4, 8})
    for (Axis axis : {Axis::Token, Axis::Channel}) {
      QuantParams p;
      p.bits = b;
      p.group = 128;
      p.axis = axis;
      const int64_t rows = 70, cols = 300;
      const std::vector<float> x = random_values(rows * cols, 100 + b, 3.0f);
      const Quantized q = kvq::quantize(x, rows, cols, p);
      const std::vector<float> x_hat = kvq::dequantize(q);
      const kvq::GroupLayout l = kvq::group_layout(rows, cols, p);
      const float maxq = static_cast<float>((1 << b) - 1);
      for (int64_t i = 0; i < l.group_count; ++i) {
        float lo = std::numeric_limits<float>::infinity(), hi = -lo;
        for (int64_t k = 0; k < l.group_size(i); ++k) {
          const float v = x[l.first_element(i) + k * l.element_stride()];
          lo = std::min(lo, v);
          hi = std::max(hi, v);
        }
        const double s = kvq::half_to_float(q.scale[i]);
        const double z = kvq::half_to_float(q.zero[i]);
        const double range = (hi - lo) / maxq;
        const double bound = s / 2 + std::fabs(z - lo) + maxq * std::fabs(s - range) +
                             4 * 0x1p-24 * (std::fabs(lo) + std::fabs(hi) + std::fabs(z));
        for (int64_t k = 0; k < l.group_size(i); ++k) {
          const int64_t e = l.first_element(i) + k * l.element_stride();
          INFO("bits " << b << " group " << i << " element " << e);
          REQUIRE(std::fabs(static_cast<double>(x[e]) - x_hat[e]) <= bound);
        }
      }
    }
}

TEST_CASE("quantize: integer zero point (RotateKV) on hand-worked groups") {
  // s32 = 3/3 = 1, zp = rne(1/1) = 1; q = clamp(rne(x) + 1) = [0, 1, rne(0.5) + 1 = 1, 3].
  Quantized q = quantize_row({-1.0f, 0.0f, 0.5f, 2.0f}, 2, 1.0f, ZeroPoint::Int);
  CHECK(q.scale == std::vector<uint16_t>{0x3C00});
  CHECK(q.zero_int == std::vector<uint8_t>{1});
  CHECK(q.zero.empty());
  CHECK(codes_of(q) == std::vector<uint8_t>{0, 1, 1, 3});
  CHECK(kvq::dequantize(q) == std::vector<float>{-1.0f, 0.0f, 0.0f, 2.0f});
  // s32 = 0.3f/7 = 0x3D2F8AF9 quantizes; zp = rne(2.333) = 2; x/s32 = [-2.33, 1.17, 4.67] ->
  // [0, 3, 7]; the stored fp16 scale 0x297C reconstructs: 0.0428466796875 * (q - 2).
  q = quantize_row({-0.1f, 0.05f, 0.2f}, 3, 1.0f, ZeroPoint::Int);
  CHECK(q.scale == std::vector<uint16_t>{0x297C});
  CHECK(q.zero_int == std::vector<uint8_t>{2});
  CHECK(codes_of(q) == std::vector<uint8_t>{0, 3, 7});
  CHECK(bits_of(kvq::dequantize(q)) == std::vector<uint32_t>{0xBDAF8000, 0x3D2F8000, 0x3E5B6000});
  // A group above 0: -lo/s = -1 clamps zp to 0; x = 4 clamps to code 3; 2.5 ties to 2.
  q = quantize_row({1.0f, 2.5f, 4.0f}, 2, 1.0f, ZeroPoint::Int);
  CHECK(q.zero_int == std::vector<uint8_t>{0});
  CHECK(codes_of(q) == std::vector<uint8_t>{1, 2, 3});
  CHECK(kvq::dequantize(q) == std::vector<float>{1.0f, 2.0f, 3.0f});
  // Constant group: s32 = 0 -> codes 0, zp 0, reconstructs as 0 (documented choice).
  q = quantize_row({3.0f, 3.0f}, 4, 1.0f, ZeroPoint::Int);
  CHECK(q.scale == std::vector<uint16_t>{0x0000});
  CHECK(q.zero_int == std::vector<uint8_t>{0});
  CHECK(codes_of(q) == std::vector<uint8_t>{0, 0});
  CHECK(kvq::dequantize(q) == std::vector<float>{0.0f, 0.0f});
}

TEST_CASE("quantize: bits per element count b plus the per-group scale and zero") {
  QuantParams p;
  p.bits = 2;
  p.group = 128;
  CHECK(kvq::quantized_bits_per_element(p) == 2.25);
  p.bits = 3;
  p.group = 64;
  CHECK(kvq::quantized_bits_per_element(p) == 3.5);
  p.zero_point = ZeroPoint::Int;  // fp16 scale + uint8 zero point
  CHECK(kvq::quantized_bits_per_element(p) == 3.375);
  for (int b = -1; b <= 9; ++b)
    CHECK(kvq::valid_bits(b) == (b == 1 || b == 2 || b == 3 || b == 4 || b == 8));
}

TEST_CASE("quantize: result does not depend on the OpenMP thread count") {
  for (Axis axis : {Axis::Token, Axis::Channel}) {
    QuantParams p;
    p.bits = 3;
    p.group = 128;
    p.axis = axis;
    const std::vector<float> x = random_values(300 * 1024, 5);
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    const Quantized a = kvq::quantize(x, 300, 1024, p);
    const std::vector<float> da = kvq::dequantize(a);
    omp_set_num_threads(3);
    const Quantized b = kvq::quantize(x, 300, 1024, p);
    const std::vector<float> db = kvq::dequantize(b);
    omp_set_num_threads(saved);
    REQUIRE(a.codes == b.codes);
    REQUIRE(a.scale == b.scale);
    REQUIRE(a.zero == b.zero);
    REQUIRE(std::memcmp(da.data(), db.data(), da.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("quantize: bad bits, group <= 0, mismatched sizes and bad clip are kvq::Error") {
  const std::vector<float> x(4 * 8, 1.0f);
  QuantParams p;
  for (int b : {0, 5, 6, 7, 9, 16, -1}) {
    p.bits = b;
    INFO("bits " << b);
    REQUIRE_THROWS_WITH(kvq::quantize(x, 4, 8, p), Catch::Contains("bits"));
  }
  p.bits = 2;
  for (int64_t g : {0, -1, -128}) {
    p.group = g;
    REQUIRE_THROWS_WITH(kvq::quantize(x, 4, 8, p), Catch::Contains("group size"));
  }
  p.group = 128;
  REQUIRE_THROWS_WITH(kvq::quantize(x, 4, 9, p, "layers.0.v"),
                      Catch::Contains("layers.0.v") && Catch::Contains("32 values"));
  REQUIRE_THROWS_AS(kvq::quantize(x, -4, -8, p), kvq::Error);
  for (float r : {0.0f, -0.8f, std::numeric_limits<float>::quiet_NaN()}) {
    p.clip = r;
    REQUIRE_THROWS_WITH(kvq::quantize(x, 4, 8, p), Catch::Contains("clip"));
  }
}

TEST_CASE("quantize: NaN or inf input is an error naming the tensor and the first bad index") {
  QuantParams p;
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    std::vector<float> x(4 * 8, 1.0f);
    x[13] = bad;
    x[20] = bad;
    REQUIRE_THROWS_WITH(kvq::quantize(x, 4, 8, p, "layers.3.k"),
                        Catch::Contains("layers.3.k") && Catch::Contains("index 13"));
  }
}

TEST_CASE("quantize: a scale or zero that overflows fp16 is an error naming the group") {
  QuantParams p;
  p.bits = 1;
  p.group = 2;
  // Group 1 spans 140000 > 65504: its scale overflows.
  REQUIRE_THROWS_WITH(kvq::quantize(std::vector<float>{0, 1, -70000, 70000}, 1, 4, p, "v"),
                      Catch::Contains("v: group 1") && Catch::Contains("scale") &&
                          Catch::Contains("overflows fp16"));
  // Group 0's minimum -70000 overflows as a zero (range 1 is fine).
  REQUIRE_THROWS_WITH(kvq::quantize(std::vector<float>{-70000, -69999, 0, 1}, 1, 4, p, "v"),
                      Catch::Contains("group 0") && Catch::Contains("zero"));
  // Integer zero points store no fp16 zero: only the scale can overflow.
  p.zero_point = ZeroPoint::Int;
  REQUIRE_NOTHROW(kvq::quantize(std::vector<float>{-70000, -69999, 0, 1}, 1, 4, p, "v"));
  REQUIRE_THROWS_AS(kvq::quantize(std::vector<float>{0, 1, -70000, 70000}, 1, 4, p, "v"),
                    kvq::Error);
}

TEST_CASE("quantize: dequantize and unpack_all reject a Quantized that does not fit its layout") {
  const Quantized good = quantize_row({0.0f, 1.0f, 2.0f, 3.0f}, 2);
  Quantized q = good;
  q.codes.push_back(0);
  REQUIRE_THROWS_WITH(kvq::dequantize(q), Catch::Contains("codes"));
  REQUIRE_THROWS_AS(kvq::unpack_all(q), kvq::Error);
  q = good;
  q.scale.clear();
  REQUIRE_THROWS_WITH(kvq::dequantize(q), Catch::Contains("scales"));
  q = good;
  q.zero[0] = 0x7C00;  // inf
  REQUIRE_THROWS_WITH(kvq::dequantize(q), Catch::Contains("group 0"));
  // Several bad groups: the first one is named (scale or zero alike), also with integer zeros.
  QuantParams p4;
  p4.group = 4;
  std::vector<float> x(32);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 5);
  Quantized many = kvq::quantize(x, 2, 16, p4);
  many.scale[5] = 0x7E00;  // NaN
  many.zero[3] = 0xFC00;   // -inf
  REQUIRE_THROWS_WITH(kvq::dequantize(many), Catch::Contains("group 3 (row 0, col 12"));
  many.zero[3] = 0;
  REQUIRE_THROWS_WITH(kvq::dequantize(many), Catch::Contains("group 5 (row 1, col 4"));
  p4.zero_point = ZeroPoint::Int;
  Quantized iz = kvq::quantize(x, 2, 16, p4);
  REQUIRE_NOTHROW(kvq::dequantize(iz));
  iz.scale[7] = 0x7C00;
  REQUIRE_THROWS_WITH(kvq::dequantize(iz), Catch::Contains("group 7"));
  q = good;
  q.params.bits = 5;
  REQUIRE_THROWS_AS(kvq::dequantize(q), kvq::Error);
}
