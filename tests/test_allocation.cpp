// AKVQ-VL TSA/PSA bit allocation (docs/spec.md §6, default text; note A1 open).
#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "reference/allocation.h"
#include "reference/error.h"

using namespace kvq;

TEST_CASE("allocation: TSA for l < L/2, PSA after") {
  for (int l = 0; l < 4; ++l) CHECK(layer_pattern(l, 8) == AttentionPattern::Tsa);
  for (int l = 4; l < 8; ++l) CHECK(layer_pattern(l, 8) == AttentionPattern::Psa);
  CHECK(layer_pattern(2, 5) == AttentionPattern::Tsa);  // 2 < 2.5
  CHECK(layer_pattern(3, 5) == AttentionPattern::Psa);
  CHECK_THROWS_AS(layer_pattern(8, 8), Error);
  CHECK_THROWS_AS(layer_pattern(-1, 8), Error);
}

TEST_CASE("allocation: PSA pivots are the shortest prefix reaching the mass, capped") {
  AllocationParams p;
  p.psa_max_fraction = 1.0;
  const std::vector<double> r{1, 50, 3, 40, 6};        // total 100
  CHECK(psa_pivots(r, p) == std::vector<int32_t>{1});  // 50 >= 50
  p.psa_mass = 0.6;
  CHECK(psa_pivots(r, p) == std::vector<int32_t>{1, 3});  // 50 < 60, 90 >= 60
  p.psa_max_fraction = 0.01;  // 1% of 5 tokens floors to 0: at least one
  CHECK(psa_pivots(r, p) == std::vector<int32_t>{1});
  p.psa_max_fraction = 1.0;
  p.psa_mass = 0.5;
  CHECK(psa_pivots(std::vector<double>{5, 5, 5}, p) == std::vector<int32_t>{0, 1});  // ties: lower
  CHECK_THROWS_AS(psa_pivots(std::vector<double>{1, NAN}, p), Error);
  CHECK_THROWS_AS(psa_pivots(std::vector<double>{}, p), Error);
}

TEST_CASE("allocation: bits per token and their average") {
  const std::vector<uint8_t> modality{0, 1, 0, 1};
  const BitAllocation tsa = allocate_bits(0, 4, modality, {}, 4);
  CHECK(tsa.pattern == AttentionPattern::Tsa);
  CHECK(tsa.bits == std::vector<uint8_t>{8, 2, 8, 2});
  CHECK(tsa.salient == std::vector<int32_t>{0, 2});
  CHECK(tsa.average_bits == 5.0);
  const BitAllocation text = allocate_bits(1, 4, {}, {}, 4);  // no modality: all text
  CHECK(text.average_bits == 8.0);
  AllocationParams p;
  p.psa_max_fraction = 1.0;
  const std::vector<double> received{0.5, 3.0, 0.25, 0.25};
  const BitAllocation psa = allocate_bits(2, 4, modality, received, 4, p);
  CHECK(psa.pattern == AttentionPattern::Psa);
  CHECK(psa.bits == std::vector<uint8_t>{2, 8, 2, 2});
  CHECK(psa.average_bits == 3.5);
  CHECK_THROWS_AS(allocate_bits(2, 4, modality, {}, 4), Error);  // PSA needs attention
  CHECK_THROWS_AS(allocate_bits(0, 4, std::vector<uint8_t>{0, 2, 0, 0}, {}, 4), Error);
  CHECK_THROWS_AS(allocate_bits(0, 4, std::vector<uint8_t>{0, 0}, {}, 4), Error);
  p.bits_hi = 5;
  CHECK_THROWS_AS(allocate_bits(0, 4, {}, {}, 4, p), Error);
}

TEST_CASE("allocation: received attention of zero queries is the harmonic tail") {
  // q = 0: every causal row is uniform, A[i, j] = 1 / (i + 1); mass_j = Hq * sum_{i>=j} 1/(i+1).
  const int64_t T = 10, Hq = 4, Hkv = 2, d = 8;
  const std::vector<float> q(static_cast<size_t>(T * Hq * d), 0.0f);
  std::vector<float> k(static_cast<size_t>(T * Hkv * d));
  for (size_t i = 0; i < k.size(); ++i) k[i] = std::sin(static_cast<float>(i));
  const std::vector<double> mass = received_attention(q, k, T, Hq, Hkv, d);
  REQUIRE(mass.size() == static_cast<size_t>(T));
  double total = 0.0;
  for (int64_t j = 0; j < T; ++j) {
    double expect = 0.0;
    for (int64_t i = j; i < T; ++i) expect += 1.0 / static_cast<double>(i + 1);
    CHECK(mass[static_cast<size_t>(j)] == Approx(Hq * expect).epsilon(1e-12));
    total += mass[static_cast<size_t>(j)];
  }
  CHECK(total == Approx(static_cast<double>(Hq * T)).epsilon(1e-12));  // rows sum to 1
  CHECK_THROWS_AS(received_attention(q, k, T, 3, Hkv, d), Error);
}
