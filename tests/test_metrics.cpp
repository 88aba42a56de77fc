#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <vector>

#include "reference/error.h"
#include "verify/metrics.h"

using Catch::Matchers::Contains;

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
}

TEST_CASE("metrics: max relative error is max abs error over max abs reference") {
  const std::vector<double> ref = {1.0, -4.0, 2.0}, got = {1.5, -4.0, 2.25};
  CHECK(kvq::max_relative_error(ref, got) == 0.5 / 4.0);
  const std::vector<double> zeros = {0.0, 0.0};
  CHECK(kvq::max_relative_error(zeros, zeros) == 0.0);
  const std::vector<double> one_zero = {1.0, 0.0};
  CHECK(std::isinf(kvq::max_relative_error(zeros, one_zero)));
  const std::vector<double> nan = {kNaN, 0.0};
  CHECK(std::isinf(kvq::max_relative_error(zeros, nan)));
  REQUIRE_THROWS_AS(kvq::max_relative_error(ref, zeros), kvq::Error);
}

TEST_CASE("metrics: NMSE and relative L2 error on a worked example") {
  const std::vector<double> ref = {3.0, 4.0}, got = {3.0, 5.0};
  CHECK(kvq::nmse_f64(ref, got) == 1.0 / 25.0);
  CHECK(kvq::relative_l2_error(ref, got) == Approx(0.2).margin(1e-15));
  CHECK(kvq::nmse_f64(ref, ref) == 0.0);
}

TEST_CASE("metrics: KL divergence worked examples") {
  const std::vector<double> p = {0.5, 0.5}, q = {0.25, 0.75};
  // 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3)
  CHECK(kvq::kl_divergence(p, q) == Approx(0.5 * std::log(4.0 / 3.0)).margin(1e-15));
  CHECK(kvq::kl_divergence(p, p) == 0.0);
  // Inputs are normalized: counts give the same value as probabilities.
  const std::vector<double> counts = {3.0, 3.0};
  CHECK(kvq::kl_divergence(counts, q) == Approx(0.5 * std::log(4.0 / 3.0)).margin(1e-15));
  // p_i = 0 terms contribute nothing; p_i > 0 where q_i = 0 is infinite.
  const std::vector<double> point = {1.0, 0.0};
  CHECK(kvq::kl_divergence(point, p) == Approx(std::log(2.0)).margin(1e-15));
  CHECK(std::isinf(kvq::kl_divergence(p, point)));
}

TEST_CASE("metrics: KL divergence rejects bad distributions") {
  const std::vector<double> p = {0.5, 0.5}, neg = {1.5, -0.5}, zero = {0.0, 0.0}, one = {1.0};
  REQUIRE_THROWS_WITH(kvq::kl_divergence(p, neg), Contains("q[1]"));
  REQUIRE_THROWS_WITH(kvq::kl_divergence(zero, p), Contains("sums to zero"));
  REQUIRE_THROWS_WITH(kvq::kl_divergence(p, one), Contains("different lengths"));
}

TEST_CASE("metrics: KL between softmax distributions of logits, shift invariant") {
  const std::vector<double> lp = {0.0, std::log(3.0)}, lq = {0.0, 0.0};
  const double expected = 0.25 * std::log(0.25 / 0.5) + 0.75 * std::log(0.75 / 0.5);
  CHECK(kvq::kl_divergence_logits(lp, lq) == Approx(expected).margin(1e-15));
  const std::vector<double> shifted = {1000.0, 1000.0 + std::log(3.0)};
  CHECK(kvq::kl_divergence_logits(shifted, lq) == Approx(expected).margin(1e-12));
  const std::vector<double> big = {1000.0, 1000.0};
  CHECK(kvq::softmax_f64(big) == std::vector<double>{0.5, 0.5});
}

TEST_CASE("metrics: set comparison lists missed and extra elements") {
  const std::vector<int64_t> truth = {0, 5}, predicted = {2, 0, 1, 1};
  const auto c = kvq::compare_sets(std::span<const int64_t>(truth), predicted);
  CHECK(c.true_positives == 1);
  CHECK(c.precision == 1.0 / 3.0);
  CHECK(c.recall == 0.5);
  CHECK(c.missed == std::vector<int64_t>{5});
  CHECK(c.extra == std::vector<int64_t>{1, 2});
  CHECK_FALSE(c.exact());
  const std::vector<int64_t> none;
  const auto empty_pred = kvq::compare_sets(std::span<const int64_t>(truth), none);
  CHECK(empty_pred.precision == 1.0);
  CHECK(empty_pred.recall == 0.0);
  const auto both_empty = kvq::compare_sets(std::span<const int64_t>(none), none);
  CHECK(both_empty.exact());
  CHECK(both_empty.recall == 1.0);
}

TEST_CASE("metrics: Super Experts compare as (layer, expert) sets") {
  const std::vector<kvq::LayerExpert> truth = {{0, 17}, {1, 88}}, predicted = {{1, 88}, {2, 17}};
  const auto c = kvq::compare_sets(std::span<const kvq::LayerExpert>(truth), predicted);
  CHECK(c.missed == std::vector<kvq::LayerExpert>{{0, 17}});
  CHECK(c.extra == std::vector<kvq::LayerExpert>{{2, 17}});
  CHECK(c.precision == 0.5);
  CHECK(c.recall == 0.5);
  const auto same = kvq::compare_sets(std::span<const kvq::LayerExpert>(truth), truth);
  CHECK(same.exact());
  CHECK(same.precision == 1.0);
}
