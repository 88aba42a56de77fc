// reference/rotation (docs/spec.md §2): the calibration rule on hand-built statistics, the
// grouped-head layout on hand-worked 2-head examples, the round trip and the shape errors.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <span>
#include <vector>

#include "reference/error.h"
#include "reference/fwht.h"
#include "reference/rotation.h"

namespace {

std::vector<float> random_values(size_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(count);
  for (float& v : x) v = dist(rng);
  return x;
}

}  // namespace

TEST_CASE("rotation: permutation sorts signed channel sums ascending, ties by lower index") {
  // 3 tokens x 6 channels. Column sums: ch0 2, ch1 -1, ch2 2, ch3 0, ch4 -1, ch5 -0.5 (the
  // last only in fp64: 1e8 - 0.5 - 1e8 accumulated in fp32 is 0, which would tie with ch3 and
  // sort ch5 after it).
  const std::vector<float> rotated = {
      1.0f, -1.0f, 3.0f,  0.0f,  0.5f,  1e8f,   //
      1.0f, 0.0f,  -2.0f, 5.0f,  -0.5f, -0.5f,  //
      0.0f, 0.0f,  1.0f,  -5.0f, -1.0f, -1e8f,
  };
  const std::vector<int32_t> perm = kvq::calibrate_permutation(rotated, 3, 6);
  // Ascending: -1 (ch1), -1 (ch4), -0.5 (ch5), 0 (ch3), 2 (ch0), 2 (ch2).
  REQUIRE(perm == std::vector<int32_t>{1, 4, 5, 3, 0, 2});
}

TEST_CASE("rotation: calibrating on rotated keys orders column sums ascending after reorder") {
  const int64_t tokens = 50, channels = 256;
  const std::vector<float> x = random_values(static_cast<size_t>(tokens * channels), 5);
  const std::vector<int32_t> perm = kvq::calibrate_permutation(x, tokens, channels);
  const std::vector<float> stored = kvq::reorder(x, tokens, perm);
  std::vector<double> sums(channels, 0.0);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t c = 0; c < channels; ++c) sums[c] += stored[t * channels + c];
  REQUIRE(std::is_sorted(sums.begin(), sums.end()));
  std::vector<int32_t> sorted = perm;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int32_t> identity(channels);
  std::iota(identity.begin(), identity.end(), 0);
  REQUIRE(sorted == identity);
}

TEST_CASE("rotation: grouped-head FWHT on a hand-worked 2-head example") {
  // One token, H = 2 heads of d = 2: [h0: 1, 2 | h1: 3, 4].
  const kvq::KvShape shape{1, 2, 2};
  const std::vector<float> k = {1.0f, 2.0f, 3.0f, 4.0f};
  // g = 2: one fwht(., 4) across both heads: [5, -1, -2, 0] (worked in test_fwht).
  kvq::RotationParams both;
  both.head_group = 2;
  REQUIRE(kvq::rotate_k(k, shape, both) == std::vector<float>{5.0f, -1.0f, -2.0f, 0.0f});
  // Reordered after the rotation: stored[j] = rotated[perm[j]].
  both.perm = {3, 0, 2, 1};
  REQUIRE(kvq::rotate_k(k, shape, both) == std::vector<float>{0.0f, 5.0f, -2.0f, -1.0f});
  // g = 1: each head alone, fwht(., 2): [1+2, 1-2] * s and [3+4, 3-4] * s.
  kvq::RotationParams single;
  single.head_group = 1;
  const float s = kvq::fwht_scale(2);
  REQUIRE(kvq::rotate_k(k, shape, single) == std::vector<float>{3.0f * s, -s, 7.0f * s, -s});
  // Two tokens: each token's groups are transformed separately.
  const kvq::KvShape two{2, 2, 2};
  const std::vector<float> k2 = {1.0f, 2.0f, 3.0f, 4.0f, 0.0f, 0.0f, 0.0f, 2.0f};
  both.perm.clear();
  REQUIRE(kvq::rotate_k(k2, two, both) ==
          std::vector<float>{5.0f, -1.0f, -2.0f, 0.0f, 1.0f, -1.0f, -1.0f, 1.0f});
}

TEST_CASE("rotation: values get fwht(., d) per head, no reordering, and are self-inverse") {
  // [h0: 1, 2, 3, 4 | h1: 5, 6, 7, 8]: h=1 -> [3,-1,7,-1] [11,-1,15,-1]; h=2 -> [10,-2,-4,0]
  // [26,-2,-4,0]; * 0.5.
  const kvq::KvShape shape{1, 2, 4};
  const std::vector<float> v = {1, 2, 3, 4, 5, 6, 7, 8};
  const std::vector<float> r = kvq::rotate_v(v, shape);
  REQUIRE(r == std::vector<float>{5, -1, -2, 0, 13, -1, -2, 0});
  REQUIRE(kvq::rotate_v(r, shape) == v);
}

TEST_CASE("rotation: inverse_rotate_k(rotate_k(x)) gives x back up to rounding") {
  const kvq::KvShape shape{37, 8, 64};  // g = 4: fwht(., 256) per group, 2 groups per token
  const std::vector<float> x = random_values(static_cast<size_t>(37 * 8 * 64), 11);
  kvq::RotationParams params;
  params.head_group = 4;
  const std::vector<float> rotated = kvq::rotate_k(x, shape, params);
  // Calibrated on the first half of the tokens, as the scenario default (docs/spec.md §2).
  const auto calib = std::span<const float>(rotated).first(18 * shape.channels());
  params.perm = kvq::calibrate_permutation(calib, 18, shape.channels());
  const std::vector<float> y = kvq::rotate_k(x, shape, params);
  REQUIRE(y == kvq::reorder(rotated, shape.tokens, params.perm));
  const std::vector<float> back = kvq::inverse_rotate_k(y, shape, params);
  double max_x = 0.0, worst = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    max_x = std::max(max_x, static_cast<double>(std::fabs(x[i])));
    worst = std::max(worst, static_cast<double>(std::fabs(back[i] - x[i])));
  }
  INFO("max error " << worst);
  REQUIRE(worst <= 8.0 * 8 * 0x1p-23 * max_x);  // 8 ulp * log2(256)
  REQUIRE(worst > 0.0);                         // a real transform pair, not a copy
}

TEST_CASE("rotation: unreorder inverts reorder exactly") {
  const std::vector<float> x = random_values(4 * 5, 3);
  const std::vector<int32_t> perm = {2, 4, 0, 1, 3};
  const std::vector<float> y = kvq::reorder(x, 4, perm);
  for (int t = 0; t < 4; ++t)
    for (int j = 0; j < 5; ++j) REQUIRE(y[t * 5 + j] == x[t * 5 + perm[j]]);
  REQUIRE(kvq::unreorder(y, 4, perm) == x);
}

TEST_CASE("rotation: g*d not a power of two or g not dividing H_kv is an error naming it") {
  REQUIRE_THROWS_WITH(kvq::check_rotation_shape({4, 4, 24}, 4),
                      Catch::Contains("head_group * head_dim") && Catch::Contains("96"));
  REQUIRE_THROWS_WITH(kvq::check_rotation_shape({4, 6, 64}, 4),
                      Catch::Contains("does not divide heads") && Catch::Contains("6"));
  REQUIRE_THROWS_WITH(kvq::check_rotation_shape({4, 4, 64}, 0), Catch::Contains("head_group"));
  REQUIRE_THROWS_AS(kvq::check_rotation_shape({4, 1024, 64}, 1024), kvq::Error);  // > 32768
  REQUIRE_NOTHROW(kvq::check_rotation_shape({4, 8, 128}, 4));
  const std::vector<float> x(4 * 6 * 64, 1.0f);
  kvq::RotationParams params;
  REQUIRE_THROWS_WITH(kvq::rotate_k(x, {4, 6, 64}, params), Catch::Contains("divide"));
  REQUIRE_THROWS_WITH(kvq::rotate_v(std::vector<float>(2 * 3 * 24), {2, 3, 24}),
                      Catch::Contains("head_dim"));
  REQUIRE_THROWS_WITH(kvq::rotate_k(std::vector<float>(10), {4, 8, 64}, params),
                      Catch::Contains("10 values"));
}

TEST_CASE("rotation: a permutation of the wrong length, repeating or out of range is an error") {
  const std::vector<float> x(2 * 4, 1.0f);
  REQUIRE_THROWS_WITH(kvq::reorder(x, 2, std::vector<int32_t>{0, 1, 2}), Catch::Contains("values"));
  REQUIRE_THROWS_WITH(kvq::reorder(x, 2, std::vector<int32_t>{0, 1, 1, 3}),
                      Catch::Contains("repeats channel 1"));
  REQUIRE_THROWS_WITH(kvq::unreorder(x, 2, std::vector<int32_t>{0, 1, 4, 3}),
                      Catch::Contains("outside"));
  kvq::RotationParams params;
  params.head_group = 2;
  params.perm = {0, 1, 2};
  REQUIRE_THROWS_WITH(kvq::rotate_k(x, {2, 2, 2}, params), Catch::Contains("one per channel"));
  params.perm = {0, 0, 1, 2};
  REQUIRE_THROWS_AS(kvq::inverse_rotate_k(x, {2, 2, 2}, params), kvq::Error);
}

TEST_CASE("rotation: non-finite input is an error naming the index") {
  std::vector<float> x(2 * 2 * 2, 1.0f);
  x[5] = std::nanf("");
  kvq::RotationParams params;
  params.head_group = 2;
  REQUIRE_THROWS_WITH(kvq::rotate_k(x, {2, 2, 2}, params), Catch::Contains("index 5"));
  REQUIRE_THROWS_WITH(kvq::calibrate_permutation(x, 2, 4), Catch::Contains("index 5"));
  REQUIRE_THROWS_WITH(kvq::calibrate_permutation(x, 3, 4), Catch::Contains("8 values"));
}

TEST_CASE("rotation: finite input whose FWHT overflows is an overflow inside, not a bad input") {
  // fwht of n = 4 equal values 3e37: the butterflies sum to 4 * 3e37 = 1.2e38, then
  // 2.4e38, below FLT_MAX 3.4e38 -- finite; with 2e38 the second stage reaches 8e38 = inf.
  kvq::RotationParams params;
  params.head_group = 2;
  std::vector<float> x(2 * 2 * 2, 3e37f);
  CHECK_NOTHROW(kvq::rotate_k(x, {2, 2, 2}, params));
  x.assign(x.size(), 2e38f);
  // Per group of 4: stage 1 gives (inf, 0, inf, 0), stage 2 (inf, 0, inf - inf = nan, 0).
  // The index is the output's, after the reorder: perm (1, 0, 2, 3) puts the inf at 1.
  params.perm = {1, 0, 2, 3};
  REQUIRE_THROWS_WITH(kvq::rotate_k(x, {2, 2, 2}, params),
                      Catch::Contains("rotate_k (FWHT): overflow inside") &&
                          Catch::Contains("inf at index 1") &&
                          Catch::Contains("every input is finite"));
  REQUIRE_THROWS_WITH(kvq::rotate_v(x, {1, 2, 4}),
                      Catch::Contains("rotate_v (FWHT): overflow inside") &&
                          Catch::Contains("inf at index 0"));
}
