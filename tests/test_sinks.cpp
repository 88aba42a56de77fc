// Massive activations and sinks (docs/spec.md §4): hand-worked cases and planted residual streams
// whose answer is known by construction.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "harness/io/safetensors.h"
#include "reference/error.h"
#include "reference/sinks.h"
#include "data_file.h"

using namespace kvq;

namespace {

// Deterministic values in [-1, 1): every token's absmax is < 1, so the median is < 1 and
// tau_rel * median < 100 = tau_abs; planted values decide the outcome alone.
std::vector<float> small_stream(int64_t tokens, int64_t hidden, uint32_t seed) {
  std::vector<float> h(static_cast<size_t>(tokens * hidden));
  uint32_t s = seed;
  for (float& v : h) {
    s = s * 1664525u + 1013904223u;
    v = static_cast<float>(s >> 8) / 8388608.0f - 1.0f;
  }
  return h;
}

void plant(std::vector<float>& h, int64_t hidden, int64_t t, int64_t c, float v) {
  h[static_cast<size_t>(t * hidden + c)] = v;
}

}  // namespace

TEST_CASE("sinks: PFN keeps the first N tokens, clamped to the sequence") {
  CHECK(pfn_sinks(5, 1) == std::vector<int32_t>{0});
  CHECK(pfn_sinks(3, 4) == std::vector<int32_t>{0, 1, 2});
  CHECK(pfn_sinks(5, 0).empty());
  CHECK(pfn_sinks(0, 1).empty());
  CHECK_THROWS_AS(pfn_sinks(-1, 1), Error);
  CHECK_THROWS_AS(pfn_sinks(4, -2), Error);
}

TEST_CASE("sinks: token_absmax takes |h| and the lowest channel on ties") {
  const std::vector<float> h{1.0f, -3.0f, 3.0f, 0.0f, 0.0f, 0.0f, -0.5f, 0.25f, -0.5f};
  const TokenAbsmax a = token_absmax(h, 3, 3);
  CHECK(a.absmax == std::vector<float>{3.0f, 0.0f, 0.5f});
  CHECK(a.argmax == std::vector<int32_t>{1, 0, 0});
}

TEST_CASE("sinks: median is element floor(T/2) of the ascending sort") {
  CHECK(median_floor(std::vector<float>{5, 1, 4, 2}) == 4.0f);  // 1 2 [4] 5
  CHECK(median_floor(std::vector<float>{3, 1, 2}) == 2.0f);     // 1 [2] 3
  CHECK(median_floor(std::vector<float>{7}) == 7.0f);
  CHECK_THROWS_AS(median_floor(std::vector<float>{}), Error);
  CHECK_THROWS_AS(median_floor(std::vector<float>{1.0f, NAN}), Error);
}

TEST_CASE("sinks: massive tokens found on a planted residual stream, with their channel") {
  const int64_t T = 64, D = 32;
  std::vector<float> h = small_stream(T, D, 7);
  plant(h, D, 0, 7, 500.0f);
  plant(h, D, 20, 3, -800.0f);
  plant(h, D, 40, 7, 99.0f);  // under tau_abs = 100: not massive
  const std::vector<MassiveToken> m = massive_tokens(h, T, D);
  REQUIRE(m.size() == 2);
  CHECK(m[0].token == 0);
  CHECK(m[0].channel == 7);
  CHECK(m[0].absmax == 500.0f);
  CHECK(m[1].token == 20);
  CHECK(m[1].channel == 3);
  CHECK(m[1].absmax == 800.0f);
  // tau_rel: lifting every other token's absmax to L makes the median L.
  auto lifted = [&](float level) {
    std::vector<float> out = h;
    for (int64_t t = 0; t < T; ++t)
      if (t != 0 && t != 20) plant(out, D, t, 0, level);
    return out;
  };
  const std::vector<MassiveToken> m6 = massive_tokens(lifted(6.0f), T, D);  // 600: 500 fails
  REQUIRE(m6.size() == 1);
  CHECK(m6[0].token == 20);
  CHECK(massive_tokens(lifted(5.0f), T, D).size() == 2);  // 500 >= 100 * 5: inclusive
  CHECK(massive_tokens(lifted(8.5f), T, D).empty());      // 800 < 850
  CHECK_THROWS_AS(massive_tokens(h, T, D - 1), Error);
  std::vector<float> bad = h;
  bad[17] = INFINITY;
  CHECK_THROWS_AS(massive_tokens(bad, T, D), Error);
}

TEST_CASE("sinks: pivot tokens take the top-k |h|, ties by lower flat index, tokens collapse") {
  // |h| ranks: 9 (flat 8, token 2), then the 5s at flat 1 (t0), 3 (t1), 11 (t3).
  const std::vector<float> h{0, 5, 0, -5, 0, 0, 1, 2, 9, 0, 0, 5};
  PivotParams p;
  p.top_k = 3;
  CHECK(pivot_tokens(h, 4, 3, p) == std::vector<int32_t>{0, 1, 2});
  p.top_k = 4;
  CHECK(pivot_tokens(h, 4, 3, p) == std::vector<int32_t>{0, 1, 2, 3});
  p.top_k = 2;  // 9 (token 2) and the first 5 (flat 1, token 0)
  CHECK(pivot_tokens(h, 4, 3, p) == std::vector<int32_t>{0, 2});
  const std::vector<float> same_token{0, 0, 0, 7, 8, 0};
  p.top_k = 2;
  CHECK(pivot_tokens(same_token, 2, 3, p) == std::vector<int32_t>{1});
  p.top_k = 100;  // more than the elements: every token
  CHECK(pivot_tokens(same_token, 2, 3, p) == std::vector<int32_t>{0, 1});
  CHECK_THROWS_AS(pivot_tokens(h, 4, 4, p), Error);
}

TEST_CASE("sinks: pivot_requires_massive keeps only the massive pivots") {
  const int64_t T = 64, D = 32;
  std::vector<float> h = small_stream(T, D, 11);
  plant(h, D, 5, 1, 300.0f);
  plant(h, D, 9, 2, 50.0f);  // a pivot (top-20) but not massive
  PivotParams p;
  const std::vector<int32_t> all = pivot_tokens(h, T, D, p);
  CHECK(std::find(all.begin(), all.end(), 9) != all.end());
  CHECK(all.size() > 2);
  p.pivot_requires_massive = true;
  CHECK(pivot_tokens(h, T, D, p) == std::vector<int32_t>{5});
}

TEST_CASE("sinks: massive-activation sinks at the first layer that has any, or a chosen one") {
  const int64_t T = 32, D = 16;
  std::vector<std::vector<float>> layers;
  for (int l = 0; l < 4; ++l) layers.push_back(small_stream(T, D, 100 + l));
  plant(layers[2], D, 4, 9, 400.0f);
  plant(layers[3], D, 4, 9, 400.0f);
  plant(layers[3], D, 17, 1, -900.0f);
  const std::vector<std::span<const float>> spans(layers.begin(), layers.end());
  const LayerSinks first = massive_activation_sinks(spans, T, D);
  CHECK(first.layer == 2);
  CHECK(first.tokens == std::vector<int32_t>{4});
  const LayerSinks chosen = massive_activation_sinks(spans, T, D, {}, 3);
  CHECK(chosen.layer == 3);
  CHECK(chosen.tokens == std::vector<int32_t>{4, 17});
  const LayerSinks none = massive_activation_sinks({spans[0], spans[1]}, T, D);
  CHECK(none.layer == -1);
  CHECK(none.tokens.empty());
  CHECK_THROWS_AS(massive_activation_sinks(spans, T, D, {}, 4), Error);
}

TEST_CASE("sinks: KVSink calibration finds the planted layer and channels, then predicts") {
  const int64_t T = 48, D = 24;
  std::vector<std::vector<float>> layers;
  for (int l = 0; l < 5; ++l) layers.push_back(small_stream(T, D, 200 + l));
  plant(layers[3], D, 0, 5, 600.0f);
  plant(layers[3], D, 0, 9, -300.0f);
  plant(layers[3], D, 30, 5, 700.0f);
  plant(layers[3], D, 30, 12, 50.0f);  // under tau_abs: not in C*
  plant(layers[4], D, 0, 20, 900.0f);  // a later layer does not move l*
  const std::vector<std::span<const float>> spans(layers.begin(), layers.end());
  const KvSinkCalibration c = calibrate_kvsink(spans, T, D);
  CHECK(c.layer == 3);
  CHECK(c.channels == std::vector<int32_t>{5, 9});  // by strength: 700 then 300
  CHECK(c.median > 0.0f);
  CHECK(c.median < 1.0f);
  CHECK(predict_kvsink(spans[3], T, D, c) == std::vector<int32_t>{0, 30});
  // A new token: |h[5]| = 60 >= 50 * median (< 50) is a sink; an all-zero row is not.
  std::vector<float> row(static_cast<size_t>(D), 0.0f);
  CHECK_FALSE(predict_kvsink_token(row, c));
  row[5] = -60.0f;
  CHECK(predict_kvsink_token(row, c));
  KvSinkParams one;
  one.max_channels = 1;
  CHECK(calibrate_kvsink(spans, T, D, one).channels == std::vector<int32_t>{5});
  // No massive layer: no calibration, no sinks predicted.
  const KvSinkCalibration none = calibrate_kvsink({spans[0]}, T, D);
  CHECK(none.layer == -1);
  CHECK(predict_kvsink(spans[0], T, D, none).empty());
  KvSinkCalibration bad = c;
  bad.channels = {D};
  CHECK_THROWS_AS(predict_kvsink(spans[3], T, D, bad), Error);
}

TEST_CASE("sinks: ground truth scores from hand-built attention matrices") {
  const int64_t T = 66;  // scored tokens j = 0, 1, 2 (j <= T - 64)
  std::vector<double> uniform(static_cast<size_t>(T * T), 0.0), sink(uniform.size(), 0.0);
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t j = 0; j <= i; ++j) uniform[static_cast<size_t>(i * T + j)] = 1.0 / (i + 1);
    sink[static_cast<size_t>(i * T)] = i == 0 ? 1.0 : 0.5;
    for (int64_t j = 1; j <= i; ++j) sink[static_cast<size_t>(i * T + j)] = 0.5 / i;
  }
  const SinkScores u = sink_scores_from_attention({uniform}, T);
  REQUIRE(u.score.size() == 3);
  for (double s : u.score) CHECK(s == Approx(1.0).epsilon(1e-12));
  CHECK(u.sinks.empty());
  // Token 0 of `sink`: mean over i = 16..65 of 0.5 (i + 1) = 0.5 * (17 + 66) / 2 = 20.75.
  const SinkScores s = sink_scores_from_attention({sink}, T);
  CHECK(s.score[0] == Approx(20.75).epsilon(1e-12));
  double expect1 = 0.0;  // token 1: mean over i = 17..65 of 0.5 (i + 1) / i
  for (int i = 17; i < T; ++i) expect1 += 0.5 * (i + 1) / i;
  CHECK(s.score[1] == Approx(expect1 / 49).epsilon(1e-12));
  CHECK(s.sinks == std::vector<int32_t>{0});
  const SinkScores both = sink_scores_from_attention({uniform, sink}, T);
  CHECK(both.score[0] == Approx((1.0 + 20.75) / 2).epsilon(1e-12));
  CHECK(both.sinks == std::vector<int32_t>{0});
  SinkScoreParams high;
  high.tau_mass = 20.76;
  CHECK(sink_scores_from_attention({sink}, T, high).sinks.empty());
  CHECK_THROWS_AS(sink_scores_from_attention({std::vector<double>(5, 0.0)}, T), Error);
  std::vector<double> bad = uniform;
  bad[3] = NAN;
  CHECK_THROWS_AS(sink_scores_from_attention({bad}, T), Error);
}

TEST_CASE("sinks: ground truth recomputes attention from q and k with grouped heads") {
  const int64_t T = 64, Hq = 2, d = 2;
  // Layers 0, 1 are skipped (l >= 2); garbage there must not matter.
  auto run = [&](int64_t Hkv) {
    std::vector<std::vector<float>> q(3), k(3);
    for (int l = 0; l < 3; ++l) {
      q[l].assign(static_cast<size_t>(T * Hq * d), l == 2 ? 0.0f : 3.0f);
      k[l].assign(static_cast<size_t>(T * Hkv * d), 0.0f);
      for (int64_t i = 0; i < T; ++i)
        for (int64_t h = 0; h < Hq; ++h) q[l][static_cast<size_t>((i * Hq + h) * d)] = 10.0f;
      k[l][0] = 10.0f;  // key 0 of KV head 0 draws all attention of heads reading KV head 0
    }
    const std::vector<std::span<const float>> qs(q.begin(), q.end()), ks(k.begin(), k.end());
    return sink_ground_truth(qs, ks, T, Hq, Hkv, d);
  };
  // One KV head shared by both query heads: A[i, 0] ~ 1, score_0 = mean(i + 1, i = 16..63).
  const SinkScores shared = run(1);
  REQUIRE(shared.score.size() == 1);
  CHECK(shared.score[0] == Approx(40.5).epsilon(1e-9));
  // Two KV heads: query head 1 reads KV head 1 (all zero keys: uniform, score 1).
  const SinkScores split = run(2);
  CHECK(split.score[0] == Approx((40.5 + 1.0) / 2).epsilon(1e-9));
  CHECK_THROWS_AS(sink_ground_truth({}, {}, T, Hq, 1, d), Error);
  // Two layers: l >= 2 is empty; the error states the real requirement, 3 layers.
  const std::vector<float> layer(static_cast<size_t>(T * Hq * d), 0.0f);
  const std::vector<std::span<const float>> two(2, std::span<const float>(layer));
  CHECK_THROWS_WITH(sink_ground_truth(two, two, T, Hq, Hq, d),
                    Catch::Matchers::Contains("needs at least 3 layers; got 2"));
}

TEST_CASE("sinks: tiny-moe recording: BOS tokens are the massive ones, ground truth is finite") {
  const auto path = kvq::testing::data_file("tiny-moe.safetensors");
  const SafetensorsFile f = SafetensorsFile::open(path.string());
  std::vector<std::vector<float>> q, k, h;
  for (int l = 0; f.has("layers." + std::to_string(l) + ".q"); ++l) {
    const std::string b = "layers." + std::to_string(l) + ".";
    q.push_back(f.read_f32(b + "q"));
    k.push_back(f.read_f32(b + "k"));
    h.push_back(f.read_f32(b + "hidden_in"));
  }
  REQUIRE(q.size() == 8);
  // At docs/spec.md's thresholds nothing is massive in this small model; with tau_abs = 2 and
  // tau_rel = 4 the two leading BOS tokens are, from layer 1 on.
  CHECK(massive_tokens(h[1], 256, 256).empty());
  MassiveParams low{2.0f, 4.0f};
  const std::vector<MassiveToken> m = massive_tokens(h[1], 256, 256, low);
  REQUIRE(m.size() == 2);
  CHECK(m[0].token == 0);
  CHECK(m[1].token == 1);
  CHECK(m[0].channel == m[1].channel);
  const std::vector<std::span<const float>> qs(q.begin(), q.end()), ks(k.begin(), k.end());
  const SinkScores s = sink_ground_truth(qs, ks, 256, 8, 4, 32);
  REQUIRE(s.score.size() == 193);
  for (double x : s.score) CHECK(std::isfinite(x));
  for (int32_t j : s.sinks) CHECK(s.score[static_cast<size_t>(j)] >= 5.0);
}

TEST_CASE("sinks: the channel rule finds a token large on one channel that the token rule misses") {
  // T = 5, D = 3. Channel 0 is 50 for every token, so every token's max is >= 50 and the token
  // rule's median is 50: token 2's 150 on channel 1 is only 3x it. Channel 1's own median is 1
  // ([1, 1, 1, 1, 150] ascending, element 2), so 150 >= 100 * 1 and >= tau_abs = 100.
  const int64_t T = 5, D = 3;
  std::vector<float> h = {50, 1, 1,  50, 1, 1,  50, -150, 120,  50, 1, 1,  50, 1, 1};
  CHECK(massive_tokens(h, T, D).empty());  // token rule, defaults tau_abs = tau_rel = 100
  MassiveParams channel;
  channel.rule = MassiveRule::Channel;
  const std::vector<MassiveToken> m = massive_tokens(h, T, D, channel);
  REQUIRE(m.size() == 1);
  CHECK(m[0].token == 2);
  CHECK(m[0].absmax == 150.0f);
  CHECK(m[0].channel == 1);  // the largest qualifying channel: 150 on 1 beats 120 on 2
  // Channel 0 (50 everywhere) never qualifies: under tau_abs, and 50 < 100 * median 50.
  MassiveParams loose = channel;
  loose.tau_abs = 10.0f;
  CHECK(massive_tokens(h, T, D, loose).size() == 1);
  // The token rule finds it once tau_rel <= 150 / 50 = 3.
  MassiveParams token3;
  token3.tau_rel = 3.0f;
  CHECK(massive_tokens(h, T, D, token3).size() == 1);
  token3.tau_rel = 3.01f;
  CHECK(massive_tokens(h, T, D, token3).empty());
  // KVSink calibration follows the rule: l* = 0, C* = {1, 2} by strength (150, then 120).
  KvSinkParams kv;
  kv.massive = channel;
  const std::vector<std::span<const float>> spans{h};
  const KvSinkCalibration c = calibrate_kvsink(spans, T, D, kv);
  CHECK(c.layer == 0);
  CHECK(c.channels == std::vector<int32_t>{1, 2});
  CHECK(calibrate_kvsink(spans, T, D).layer == -1);
  CHECK(parse_massive_rule("channel") == MassiveRule::Channel);
  CHECK(std::string(massive_rule_name(MassiveRule::Token)) == "token");
  CHECK_THROWS_AS(parse_massive_rule("tokens"), Error);
}

TEST_CASE("sinks: gutenberg-llama recording: BOS is the sink; the channel rule finds it, the token rule at 100 does not") {
  // Expected values measured independently (numpy over the fp32 recording, data/SOURCES.md):
  // BOS's max |h| is 414-473 on channel 107 in layers 1-4, 29-57x the median token's max and
  // 125-233x channel 107's median; layer 0 has no value above 1.02.
  const auto path = kvq::testing::data_file("gutenberg-llama-256.safetensors");
  const SafetensorsFile f = SafetensorsFile::open(path.string());
  std::vector<std::vector<float>> q, k, h;
  for (int l = 0; f.has("layers." + std::to_string(l) + ".q"); ++l) {
    const std::string b = "layers." + std::to_string(l) + ".";
    q.push_back(f.read_f32(b + "q"));
    k.push_back(f.read_f32(b + "k"));
    h.push_back(f.read_f32(b + "hidden_in"));
  }
  REQUIRE(h.size() == 5);
  const std::vector<std::span<const float>> hs(h.begin(), h.end());
  CHECK(massive_activation_sinks(hs, 256, 512).layer == -1);  // token rule, tau_rel 100
  const LayerSinks at50 = massive_activation_sinks(hs, 256, 512, {100.0f, 50.0f});
  CHECK(at50.layer == 1);  // 57x at layer 1
  CHECK(at50.tokens == std::vector<int32_t>{0});
  MassiveParams channel;
  channel.rule = MassiveRule::Channel;
  for (int l = 1; l < 5; ++l) {
    const std::vector<MassiveToken> m = massive_tokens(h[static_cast<size_t>(l)], 256, 512, channel);
    INFO("layer " << l);
    REQUIRE(m.size() == 1);
    CHECK(m[0].token == 0);
    CHECK(m[0].channel == 107);
    CHECK(m[0].absmax > 400.0f);
  }
  CHECK(massive_tokens(h[0], 256, 512, channel).empty());
  // The attention-mass ground truth (fp64 from q and k): BOS alone is a sink.
  const std::vector<std::span<const float>> qs(q.begin(), q.end()), ks(k.begin(), k.end());
  const SinkScores s = sink_ground_truth(qs, ks, 256, 4, 4, 128);
  CHECK(s.sinks == std::vector<int32_t>{0});
  CHECK(s.score[0] > 10.0);
}
