// reference/fwht against the dense Sylvester Hadamard matrix in fp64 (docs/spec.md §1 oracle), its
// algebraic properties, a hand-worked example with exact bits and the size checks.
#include <omp.h>

#include <Eigen/Dense>
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
#include "reference/fwht.h"

namespace {

// H_1 = [1], H_2n = [[H, H], [H, -H]].
Eigen::MatrixXd sylvester(int n) {
  Eigen::MatrixXd h = Eigen::MatrixXd::Ones(1, 1);
  while (h.rows() < n) {
    const Eigen::Index m = h.rows();
    Eigen::MatrixXd next(2 * m, 2 * m);
    next.topLeftCorner(m, m) = h;
    next.topRightCorner(m, m) = h;
    next.bottomLeftCorner(m, m) = h;
    next.bottomRightCorner(m, m) = -h;
    h = std::move(next);
  }
  return h;
}

std::vector<float> random_values(size_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(count);
  for (float& v : x) v = dist(rng);
  return x;
}

uint32_t bits(float f) {
  return std::bit_cast<uint32_t>(f);
}

constexpr double kUlp = std::numeric_limits<float>::epsilon();  // 2^-23

}  // namespace

TEST_CASE("fwht: matches the dense fp64 Sylvester matrix for every n = 2 ... 4096") {
  for (int m = 1; m <= 12; ++m) {
    const int n = 1 << m;
    const Eigen::MatrixXd h = sylvester(n);
    if (n <= 256)  // oracle sanity, H*H = nI (larger n: too slow to multiply densely)
      REQUIRE((h * h).isApprox(n * Eigen::MatrixXd::Identity(n, n)));
    const int blocks = 3;
    std::vector<float> x = random_values(static_cast<size_t>(n) * blocks, 1000u + m);
    const std::vector<float> input = x;
    kvq::fwht(x, n);
    for (int blk = 0; blk < blocks; ++blk) {
      Eigen::VectorXd in(n);
      for (int k = 0; k < n; ++k) in[k] = input[blk * n + k];
      const Eigen::VectorXd ref = (h * in) / std::sqrt(static_cast<double>(n));
      const double bound = 4.0 * kUlp * m * ref.cwiseAbs().maxCoeff();
      double worst = 0.0;
      for (int k = 0; k < n; ++k) worst = std::max(worst, std::fabs(x[blk * n + k] - ref[k]));
      INFO("n = " << n << ", block " << blk << ", max error " << worst << ", bound " << bound);
      REQUIRE(worst <= bound);
    }
  }
}

TEST_CASE("fwht: applying it twice gives the input back (self-inverse up to rounding)") {
  for (int m = 1; m <= 15; ++m) {
    const int n = 1 << m;
    const std::vector<float> x = random_values(static_cast<size_t>(n) * 2, 2000u + m);
    std::vector<float> y = x;
    kvq::fwht(y, n);
    kvq::fwht(y, n);
    double max_x = 0.0, worst = 0.0;
    for (size_t k = 0; k < x.size(); ++k) {
      max_x = std::max(max_x, static_cast<double>(std::fabs(x[k])));
      worst = std::max(worst, static_cast<double>(std::fabs(y[k] - x[k])));
    }
    INFO("n = " << n << ", max error " << worst);
    REQUIRE(worst <= 8.0 * kUlp * m * max_x);
  }
}

TEST_CASE("fwht: preserves the Euclidean norm of each block (orthonormal)") {
  for (int m = 1; m <= 15; ++m) {
    const int n = 1 << m;
    std::vector<float> x = random_values(static_cast<size_t>(n), 3000u + m);
    double before = 0.0;
    for (float v : x) before += static_cast<double>(v) * v;
    kvq::fwht(x, n);
    double after = 0.0;
    for (float v : x) after += static_cast<double>(v) * v;
    INFO("n = " << n << ", |x|^2 = " << before << ", |Hx|^2 = " << after);
    REQUIRE(std::fabs(after - before) <= 8.0 * kUlp * m * before);
  }
}

TEST_CASE("fwht: hand-worked n = 4 and n = 2 examples give exact bits") {
  // [1, 2, 3, 4]: h=1 -> [3, -1, 7, -1]; h=2 -> [10, -2, -4, 0]; * 0.5 -> [5, -1, -2, 0].
  std::vector<float> a = {1.0f, 2.0f, 3.0f, 4.0f};
  kvq::fwht(a, 4);
  CHECK(a == std::vector<float>{5.0f, -1.0f, -2.0f, 0.0f});
  // Rounding follows the stage order: [1, 2^-24, 0, 0]: h=1 -> [1 + 2^-24 -> 1 (tie to even),
  // 1 - 2^-24 (exact), 0, 0]; h=2 -> [1, 1 - 2^-24, 1, 1 - 2^-24]; * 0.5.
  std::vector<float> b = {1.0f, 0x1p-24f, 0.0f, 0.0f};
  kvq::fwht(b, 4);
  CHECK(bits(b[0]) == 0x3F000000u);  // 0.5
  CHECK(bits(b[1]) == 0x3EFFFFFFu);  // 0.5 - 2^-25
  CHECK(bits(b[2]) == 0x3F000000u);
  CHECK(bits(b[3]) == 0x3EFFFFFFu);
  // n = 2: s = (float)(1/sqrt(2)) = 0x3F3504F3; [1, 0] -> [s, s], [1, -1] -> [0, 2s].
  CHECK(bits(kvq::fwht_scale(2)) == 0x3F3504F3u);
  CHECK(bits(kvq::fwht_scale(8)) == 0x3EB504F3u);
  CHECK(kvq::fwht_scale(4) == 0.5f);
  CHECK(kvq::fwht_scale(32768) == static_cast<float>(1.0 / std::sqrt(32768.0)));
  std::vector<float> c = {1.0f, 0.0f, 1.0f, -1.0f};
  kvq::fwht(c, 2);
  CHECK(bits(c[0]) == 0x3F3504F3u);
  CHECK(bits(c[1]) == 0x3F3504F3u);
  CHECK(c[2] == 0.0f);
  CHECK(bits(c[3]) == 0x3FB504F3u);  // 2 * s, exact
}

TEST_CASE("fwht: every block of n values is transformed on its own") {
  const int n = 64;
  const std::vector<float> x = random_values(static_cast<size_t>(n) * 5, 77);
  std::vector<float> all = x;
  kvq::fwht(all, n);
  for (int blk = 0; blk < 5; ++blk) {
    std::vector<float> one(x.begin() + blk * n, x.begin() + (blk + 1) * n);
    kvq::fwht(one, n);
    REQUIRE(std::equal(one.begin(), one.end(), all.begin() + blk * n));
  }
  std::vector<float> empty;
  REQUIRE_NOTHROW(kvq::fwht(empty, 8));  // zero blocks
}

TEST_CASE("fwht: result does not depend on the OpenMP thread count") {
  const int n = 128;
  const std::vector<float> x = random_values(static_cast<size_t>(n) * 4096, 99);
  const int saved = omp_get_max_threads();
  std::vector<float> one = x, many = x;
  omp_set_num_threads(1);
  kvq::fwht(one, n);
  omp_set_num_threads(3);
  kvq::fwht(many, n);
  omp_set_num_threads(saved);
  REQUIRE(std::memcmp(one.data(), many.data(), one.size() * sizeof(float)) == 0);
}

TEST_CASE("fwht: n not a power of two in [2, 32768] or a size not a multiple of n is an error") {
  std::vector<float> x(96, 1.0f);
  for (int n : {0, 1, 3, 6, 12, 65536, -4, -2}) {
    INFO("n = " << n);
    REQUIRE_THROWS_WITH(kvq::fwht(x, n), Catch::Contains("power of two"));
    REQUIRE_THROWS_AS(kvq::fwht_scale(n), kvq::Error);
  }
  REQUIRE_THROWS_WITH(kvq::fwht(x, 64), Catch::Contains("96") && Catch::Contains("multiple"));
  REQUIRE(x == std::vector<float>(96, 1.0f));  // a rejected call leaves x untouched
}
