// reference/tensor.h: exact widening (checked against the IEEE value formulas), shape checks and
// the non-finite input rule of docs/spec.md §0.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "reference/error.h"
#include "reference/tensor.h"

namespace {

double half_value(uint16_t h) {
  const int sign = (h >> 15) ? -1 : 1;
  const int exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  if (exp == 0x1F) return man ? std::nan("") : sign * std::numeric_limits<double>::infinity();
  return exp == 0 ? sign * std::ldexp(man, -24) : sign * std::ldexp(1024 + man, exp - 25);
}

double bf16_value(uint16_t b) {
  const int sign = (b >> 15) ? -1 : 1;
  const int exp = (b >> 7) & 0xFF, man = b & 0x7F;
  if (exp == 0xFF) return man ? std::nan("") : sign * std::numeric_limits<double>::infinity();
  return exp == 0 ? sign * std::ldexp(man, -133) : sign * std::ldexp(128 + man, exp - 134);
}

std::vector<uint16_t> all_patterns() {
  std::vector<uint16_t> p(65536);
  for (uint32_t i = 0; i < 65536; ++i) p[i] = static_cast<uint16_t>(i);
  return p;
}

}  // namespace

TEST_CASE("tensor: widen_f32 of F16 is exact for every pattern") {
  const std::vector<uint16_t> p = all_patterns();
  const kvq::TensorView view{p.data(), kvq::DType::F16, {256, 256}};
  const std::vector<float> out = kvq::widen_f32(view, "k");
  REQUIRE(out.size() == 65536);
  for (size_t i = 0; i < out.size(); ++i) {
    const double expected = half_value(p[i]);
    INFO("pattern " << i);
    if (std::isnan(expected))
      REQUIRE(std::isnan(out[i]));
    else
      REQUIRE(static_cast<double>(out[i]) == expected);
  }
}

TEST_CASE("tensor: widen_f32 of BF16 is exact for every pattern") {
  const std::vector<uint16_t> p = all_patterns();
  const kvq::TensorView view{p.data(), kvq::DType::BF16, {65536}};
  const std::vector<float> out = kvq::widen_f32(view, "v");
  for (size_t i = 0; i < out.size(); ++i) {
    const double expected = bf16_value(p[i]);
    INFO("pattern " << i);
    if (std::isnan(expected))
      REQUIRE(std::isnan(out[i]));
    else
      REQUIRE(static_cast<double>(out[i]) == expected);
  }
}

TEST_CASE("tensor: widen_f32 of F32 copies bits; integer dtypes are an error naming the tensor") {
  const std::vector<float> x = {1.5f, -0.0f, 3e38f, 0x1p-149f};
  const std::vector<float> out = kvq::widen_f32({x.data(), kvq::DType::F32, {4}}, "q");
  REQUIRE(std::memcmp(out.data(), x.data(), sizeof(float) * 4) == 0);
  const std::vector<int32_t> ids = {1, 2};
  REQUIRE_THROWS_WITH(kvq::widen_f32({ids.data(), kvq::DType::I32, {2}}, "layers.0.ids"),
                      Catch::Contains("layers.0.ids") && Catch::Contains("I32"));
}

TEST_CASE("tensor: shape_numel multiplies, rejects negative dimensions and int64 overflow") {
  CHECK(kvq::shape_numel({}) == 1);
  CHECK(kvq::shape_numel({3, 0, 5}) == 0);
  CHECK(kvq::shape_numel({32, 4096, 8, 128}) == 134217728);
  CHECK(kvq::shape_numel({INT64_MAX}) == INT64_MAX);
  REQUIRE_THROWS_AS(kvq::shape_numel({int64_t{1} << 32, int64_t{1} << 32}), kvq::Error);
  REQUIRE_THROWS_WITH(kvq::shape_numel({int64_t{1} << 40, int64_t{1} << 30}, "layers.3.k"),
                      Catch::Contains("layers.3.k") && Catch::Contains("overflow"));
  REQUIRE_THROWS_WITH(kvq::shape_numel({4, -1}, "layers.1.v"),
                      Catch::Contains("layers.1.v") && Catch::Contains("negative"));
  CHECK(kvq::shape_string({4, 8, 128}) == "[4, 8, 128]");
}

TEST_CASE("tensor: require_finite names the tensor and the first bad index") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> ok = {0.0f, -1.0f, std::numeric_limits<float>::max()};
  REQUIRE_NOTHROW(kvq::require_finite(ok, "x"));
  const std::vector<float> bad = {1.0f, 2.0f, 3.0f, nan, inf};
  REQUIRE_THROWS_WITH(kvq::require_finite(bad, "layers.2.k"),
                      Catch::Contains("layers.2.k") && Catch::Contains("index 3"));
  const std::vector<float> neg_inf = {-inf, nan};
  REQUIRE_THROWS_WITH(kvq::require_finite(neg_inf, "h"), Catch::Contains("index 0"));
}

TEST_CASE("tensor: Tensor is zero-filled and from_f32 checks the element count") {
  const kvq::Tensor t(kvq::DType::F16, {3, 5});
  REQUIRE(t.bytes.size() == 30);
  for (std::byte b : t.bytes) REQUIRE(b == std::byte{0});
  const std::vector<float> v = {1, 2, 3, 4, 5, 6};
  const kvq::Tensor u = kvq::Tensor::from_f32(v, {2, 3});
  REQUIRE(u.data<float>()[5] == 6.0f);
  REQUIRE(kvq::dtype_size(kvq::DType::BF16) == 2);
  REQUIRE(std::string(kvq::dtype_name(kvq::DType::U8)) == "U8");
  REQUIRE_THROWS_AS(kvq::Tensor::from_f32(v, {4, 2}), kvq::Error);
}
