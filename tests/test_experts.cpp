// Super Experts (docs/spec.md §5): statistics on planted routing tables, numpy's percentile on
// values worked by hand, and the selection rule on worked examples.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <vector>

#include "harness/io/safetensors.h"
#include "reference/error.h"
#include "reference/experts.h"
#include "data_file.h"

using namespace kvq;

TEST_CASE("experts: statistics keep the first (token, slot) of each expert's maximum") {
  // 4 tokens, top-2, 4 experts; expert 3 is never routed.
  const std::vector<int32_t> ids{0, 1, 1, 2, 0, 1, 2, 0};
  const std::vector<float> absmax{1, 5, 5, 2, 7, 0.5f, 2, 7};
  const std::vector<int32_t> argmax{3, 4, 5, 6, 7, 8, 9, 10};
  const std::vector<ExpertStat> s = expert_statistics(ids, absmax, argmax, 4, 2, 4);
  REQUIRE(s.size() == 4);
  CHECK(s[0].max_abs == 7.0f);
  CHECK(s[0].token == 2);  // 7 at (2, 0) before (3, 1)
  CHECK(s[0].channel == 7);
  CHECK(s[1].max_abs == 5.0f);
  CHECK(s[1].token == 0);  // 5 at (0, 1) before (1, 0)
  CHECK(s[1].channel == 4);
  CHECK(s[2].max_abs == 2.0f);
  CHECK(s[2].token == 1);
  CHECK(s[3].max_abs == 0.0f);
  CHECK(s[3].token == -1);
  CHECK(s[3].channel == -1);
  // Without down_argmax (the tiny-moe recording has none) the channel is -1.
  const std::vector<ExpertStat> no_arg = expert_statistics(ids, absmax, {}, 4, 2, 4);
  CHECK(no_arg[0].max_abs == 7.0f);
  CHECK(no_arg[0].token == 2);
  CHECK(no_arg[0].channel == -1);
}

TEST_CASE("experts: statistics reject bad ids, non-finite values and mismatched shapes") {
  const std::vector<int32_t> ids{0, 4};
  const std::vector<float> absmax{1, 2};
  CHECK_THROWS_AS(expert_statistics(ids, absmax, {}, 1, 2, 4), Error);  // id 4 of 4 experts
  CHECK_THROWS_AS(
      expert_statistics(std::vector<int32_t>{0, 1}, std::vector<float>{1, NAN}, {}, 1, 2, 4),
      Error);
  CHECK_THROWS_AS(expert_statistics(std::vector<int32_t>{0, 1}, std::vector<float>{1}, {}, 1, 2, 4),
                  Error);
  CHECK_THROWS_AS(
      expert_statistics(std::vector<int32_t>{0, 1}, std::vector<float>{1, -1}, {}, 1, 2, 4), Error);
  CHECK_THROWS_AS(expert_statistics({}, {}, {}, 0, 0, 4), Error);
  CHECK(expert_statistics({}, {}, {}, 0, 2, 3).size() == 3);  // no tokens: all unrouted
}

TEST_CASE("experts: percentile matches numpy's linear method on hand-worked values") {
  const std::vector<double> v{10, 9, 8, 7, 6, 5, 4, 3, 2, 1};
  // np.percentile(1..10, 50) = 5.5; 99.5: index 9 * 0.995 = 8.955 -> 10 - 1 * 0.045 = 9.955.
  CHECK(percentile_linear(v, 50.0) == 5.5);
  CHECK(percentile_linear(v, 99.5) == Approx(9.955).epsilon(1e-15));
  CHECK(percentile_linear(v, 0.0) == 1.0);
  CHECK(percentile_linear(v, 100.0) == 10.0);
  CHECK(percentile_linear(std::vector<double>{4.0}, 99.5) == 4.0);
  CHECK_THROWS_AS(percentile_linear(std::vector<double>{}, 50.0), Error);
  CHECK_THROWS_AS(percentile_linear(v, 101.0), Error);
}

TEST_CASE("experts: include_layers rounds half to even like Python's round") {
  CHECK(included_layer_count(8, 0.75) == 6);
  CHECK(included_layer_count(6, 0.75) == 4);  // 4.5 -> 4
  CHECK(included_layer_count(2, 0.75) == 2);  // 1.5 -> 2
  CHECK(included_layer_count(4, 0.75) == 3);
}

TEST_CASE("experts: Super Experts by P99.5 over the first 0.75 L layers (worked example)") {
  // 4 layers x 8 experts, all m = 1 except (1, 3) = 100, (2, 5) = 12 and (3, 0) = 1000 in the
  // excluded last layer. 24 considered values, sorted: 22 x 1, 12, 100. P99.5: index
  // 23 * 0.995 = 22.885 -> 100 - 88 * 0.115 = 89.88; floor(100 / 10) = 10. Only (1, 3).
  std::vector<std::vector<ExpertStat>> stats(4, std::vector<ExpertStat>(8));
  for (auto& layer : stats)
    for (ExpertStat& e : layer) e = {1.0f, 0, 0};
  stats[1][3] = {100.0f, 17, 42};
  stats[2][5] = {12.0f, 3, 1};
  stats[3][0] = {1000.0f, 0, 0};
  const std::vector<SuperExpert> se = select_super_experts(stats);
  REQUIRE(se.size() == 1);
  CHECK(se[0].rank == 1);
  CHECK(se[0].layer == 1);
  CHECK(se[0].expert == 3);
  CHECK(se[0].max_abs == 100.0f);
  CHECK(se[0].token == 17);
  CHECK(se[0].channel == 42);
}

TEST_CASE("experts: the strict floor(max / 10) rule removes values above P99.5") {
  // 20 layers x 50 experts = 1000 values, all considered (include_layers = 1). Sorted top:
  // ..., 1 (index 994), 20, 30, 40, 50, 500. P99.5 = index 999 * 0.995 = 994.005 ->
  // 1 + 19 * 0.005 = 1.095; floor(500 / 10) = 50, and 50 > 50 is false (strict).
  std::vector<std::vector<ExpertStat>> stats(20, std::vector<ExpertStat>(50));
  for (auto& layer : stats)
    for (ExpertStat& e : layer) e = {1.0f, 0, -1};
  stats[3][7].max_abs = 20.0f;
  stats[5][1].max_abs = 30.0f;
  stats[9][9].max_abs = 40.0f;
  stats[11][2].max_abs = 50.0f;
  stats[0][0].max_abs = 500.0f;
  SuperExpertParams p;
  p.include_layers = 1.0;
  std::vector<SuperExpert> se = select_super_experts(stats, p);
  REQUIRE(se.size() == 1);
  CHECK(se[0].layer == 0);
  CHECK(se[0].expert == 0);
  stats[11][2].max_abs = 51.0f;
  se = select_super_experts(stats, p);
  REQUIRE(se.size() == 2);
  CHECK(se[0].max_abs == 500.0f);
  CHECK(se[0].rank == 1);
  CHECK(se[1].layer == 11);
  CHECK(se[1].expert == 2);
  CHECK(se[1].rank == 2);
  stats[2][2].max_abs = NAN;
  CHECK_THROWS_AS(select_super_experts(stats, p), Error);
}

TEST_CASE("experts: the tiny-moe recording has a Super Expert (real data)") {
  const auto path = kvq::testing::data_file("tiny-moe.safetensors");
  const SafetensorsFile f = SafetensorsFile::open(path.string());
  std::vector<std::vector<ExpertStat>> stats;
  for (int l = 0; f.has("layers." + std::to_string(l) + ".experts.ids"); ++l) {
    const std::string base = "layers." + std::to_string(l) + ".experts.";
    const TensorView ids = f.view(base + "ids");
    REQUIRE(ids.shape.size() == 2);
    CHECK_FALSE(f.has(base + "down_argmax"));  // optional: absent in this recording
    stats.push_back(expert_statistics(f.read_i32(base + "ids"), f.read_f32(base + "down_absmax"),
                                      {}, ids.shape[0], ids.shape[1], 8));
  }
  REQUIRE(stats.size() == 8);
  const std::vector<SuperExpert> se = select_super_experts(stats);
  REQUIRE_FALSE(se.empty());
  for (size_t i = 0; i < se.size(); ++i) {
    CHECK(se[i].layer < 6);  // round(0.75 * 8)
    CHECK(se[i].rank == static_cast<int32_t>(i + 1));
    if (i > 0) CHECK(se[i].max_abs <= se[i - 1].max_abs);
  }
  WARN("tiny-moe Super Expert #1: layer " << se[0].layer << " expert " << se[0].expert
                                          << " m = " << se[0].max_abs << " token " << se[0].token);
}
