// Decode attention over a quantized cache (docs/spec.md §7) against its fp64 oracle and against
// hand-computed RoPE and softmax values.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <vector>

#include "reference/attention.h"
#include "reference/error.h"
#include "reference/half.h"

using namespace kvq;

namespace {

std::vector<float> wave(size_t n, float scale, float phase) {
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i)
    x[i] = scale * std::sin(0.37f * static_cast<float>(i) + phase) +
           0.3f * scale * std::cos(1.91f * static_cast<float>(i * i % 97));
  return x;
}

double max_rel_error(const std::vector<float>& got, const std::vector<double>& oracle) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    num = std::max(num, std::fabs(static_cast<double>(got[i]) - oracle[i]));
    den = std::max(den, std::fabs(oracle[i]));
  }
  return num / den;
}

// A cache of T tokens quantized per token at `bits` (no rotation), K post-RoPE.
DecodeCache quantized_cache(int64_t T, int64_t H, int64_t d, int bits) {
  DecodeCache c;
  c.shape = {T, H, d};
  QuantParams p;
  p.bits = bits;
  p.group = 32;
  c.k = quantize(wave(static_cast<size_t>(T * H * d), 1.5f, 0.1f), T, H * d, p, "k");
  c.v = quantize(wave(static_cast<size_t>(T * H * d), 0.8f, 2.0f), T, H * d, p, "v");
  return c;
}

}  // namespace

TEST_CASE("attention: RoPE rotates pair (2i, 2i+1) by position * theta^(-2i/d)") {
  std::vector<float> x{1.0f, 2.0f, -0.5f, 4.0f};  // one head, d = 4, position 3
  apply_rope(x, 1, 4, 3, 10000.0f);
  const auto c0 = static_cast<float>(std::cos(3.0)), s0 = static_cast<float>(std::sin(3.0));
  const auto c1 = static_cast<float>(std::cos(0.03)), s1 = static_cast<float>(std::sin(0.03));
  // Each product rounded to fp32, then the sum (no FMA).
  const float a0 = 1.0f * c0, b0 = 2.0f * s0, a1 = 1.0f * s0, b1 = 2.0f * c0;
  const float a2 = -0.5f * c1, b2 = 4.0f * s1, a3 = -0.5f * s1, b3 = 4.0f * c1;
  CHECK(x[0] == a0 - b0);
  CHECK(x[1] == a1 + b1);
  CHECK(x[2] == a2 - b2);
  CHECK(x[3] == a3 + b3);
  CHECK(x[0] == Approx(std::cos(3.0) - 2 * std::sin(3.0)).epsilon(1e-6));
  std::vector<float> y{1.5f, -2.5f, 3.0f, 0.25f, 7.0f, 8.0f};  // position 0: identity
  const std::vector<float> y0 = y;
  apply_rope(y, 3, 2, 0, 10000.0f);
  CHECK(y == y0);
}

TEST_CASE("attention: RoPE rejects odd head_dim, bad sizes and negative positions") {
  std::vector<float> x(6, 1.0f);
  CHECK_THROWS_AS(apply_rope(x, 2, 3, 1, 10000.0f), Error);
  CHECK_THROWS_AS(apply_rope(x, 1, 4, 1, 10000.0f), Error);
  std::vector<float> y(4, 1.0f);
  CHECK_THROWS_AS(apply_rope(y, 1, 4, -1, 10000.0f), Error);
  CHECK_THROWS_AS(apply_rope(y, 1, 4, 1, 0.0f), Error);
}

TEST_CASE("attention: decode over a quantized cache is within 1e-3 of the fp64 oracle") {
  for (int bits : {2, 4, 8}) {
    const DecodeCache c = quantized_cache(50, 2, 32, bits);
    const std::vector<float> q = wave(4 * 32, 2.0f, 0.7f);  // 4 query heads over 2 KV heads
    const std::vector<float> o = attention_decode(q, 4, c);
    const std::vector<double> oracle = attention_decode_oracle(q, 4, c);
    REQUIRE(o.size() == oracle.size());
    CHECK(max_rel_error(o, oracle) <= 1e-3);
  }
}

TEST_CASE("attention: reconstruction of a plain cache is dequantize itself") {
  const DecodeCache c = quantized_cache(9, 2, 8, 3);
  CHECK(reconstruct_keys(c) == dequantize(c.k));
  CHECK(reconstruct_values(c) == dequantize(c.v));
}

TEST_CASE("attention: grouped-query heads read KV head h / (Hq / Hkv), softmax by hand") {
  // d = 1, two tokens, two KV heads, four query heads. KV head 0: k = (0, ln 3), v = (1, 5);
  // KV head 1: k = (0, 0), v = (2, 4). Query 1 on head 0: weights 1/4, 3/4 -> 1/4 + 15/4 = 4.
  DecodeCache c;
  c.shape = {2, 2, 1};
  c.kept = {1, 1};
  const float ln3 = std::log(3.0f);
  c.k_f32 = {0.0f, 0.0f, ln3, 0.0f};
  c.v_f32 = {1.0f, 2.0f, 5.0f, 4.0f};
  const std::vector<float> q{1.0f, 1.0f, 1.0f, 1.0f};
  const std::vector<double> o = attention_decode_oracle(q, 4, c);
  CHECK(o[0] == Approx(0.25 * 1 + 0.75 * 5).epsilon(1e-6));  // heads 0, 1 -> KV head 0
  CHECK(o[1] == Approx(4.0).epsilon(1e-6));
  CHECK(o[2] == Approx(3.0).epsilon(1e-12));  // heads 2, 3 -> KV head 1: uniform (2 + 4) / 2
  CHECK(o[3] == Approx(3.0).epsilon(1e-12));
  const std::vector<float> f = attention_decode(q, 4, c);
  CHECK(f[1] == Approx(4.0f).epsilon(1e-6));
  CHECK(f[3] == 3.0f);
}

TEST_CASE("attention: fp16 sink tokens reproduce the unquantized keys and scores") {
  // fp16-representable K and V (multiples of 1/64): kept rows must come back exactly, so the
  // scores of the sinks are the unquantized ones; all-kept attention equals the dense one.
  const int64_t T = 12, H = 2, d = 8, C = H * d;
  std::vector<float> k(static_cast<size_t>(T * C)), v(k.size());
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = static_cast<float>(static_cast<int>(i * 37 % 129) - 64) / 64.0f;
    v[i] = static_cast<float>(static_cast<int>(i * 11 % 77) - 38) / 64.0f;
  }
  DecodeCache c = quantized_cache(T, H, d, 2);
  c.kept.assign(static_cast<size_t>(T), 0);
  c.k_fp16.assign(k.size(), 0);
  c.v_fp16.assign(v.size(), 0);
  for (int64_t t : {0, 5}) {
    c.kept[static_cast<size_t>(t)] = 1;
    for (int64_t i = 0; i < C; ++i) {
      c.k_fp16[static_cast<size_t>(t * C + i)] = float_to_half(k[static_cast<size_t>(t * C + i)]);
      c.v_fp16[static_cast<size_t>(t * C + i)] = float_to_half(v[static_cast<size_t>(t * C + i)]);
    }
  }
  const std::vector<float> rk = reconstruct_keys(c);
  for (int64_t t : {0, 5})
    for (int64_t i = 0; i < C; ++i)
      CHECK(rk[static_cast<size_t>(t * C + i)] == k[static_cast<size_t>(t * C + i)]);
  // All tokens kept: attention equals fp64 attention over the original K and V.
  c.kept.assign(static_cast<size_t>(T), 1);
  for (size_t i = 0; i < k.size(); ++i) {
    c.k_fp16[i] = float_to_half(k[i]);
    c.v_fp16[i] = float_to_half(v[i]);
  }
  const std::vector<float> q = wave(2 * d, 1.0f, 0.3f);
  const std::vector<float> o = attention_decode(q, 2, c);
  for (int64_t h = 0; h < 2; ++h) {
    std::vector<double> s(static_cast<size_t>(T));
    double m = -INFINITY, z = 0.0;
    for (int64_t j = 0; j < T; ++j) {
      double dot = 0.0;
      for (int64_t e = 0; e < d; ++e) dot += double(q[h * d + e]) * k[j * C + h * d + e];
      s[j] = dot / std::sqrt(double(d));
      m = std::max(m, s[j]);
    }
    for (double& x : s) z += (x = std::exp(x - m));
    for (int64_t e = 0; e < d; ++e) {
      double expect = 0.0;
      for (int64_t j = 0; j < T; ++j) expect += s[j] / z * v[j * C + h * d + e];
      CHECK(o[h * d + e] == Approx(expect).margin(1e-5));
    }
  }
}

TEST_CASE("attention: pre-RoPE and rotated caches invert their rotation before RoPE") {
  // A cache of rotated, 8-bit quantized pre-RoPE keys reconstructs close to RoPE_t(k_pre).
  const int64_t T = 6, H = 4, d = 8, C = H * d;
  const std::vector<float> k_pre = wave(static_cast<size_t>(T * C), 1.0f, 0.4f);
  DecodeCache c;
  c.shape = {T, H, d};
  c.k_pre_rope = true;
  c.k_rotation = KeyRotation::GroupedHadamard;
  c.k_rotation_params.head_group = 4;
  QuantParams p;
  p.bits = 8;
  c.k = quantize(rotate_k(k_pre, c.shape, c.k_rotation_params), T, C, p, "k");
  c.v_per_head_hadamard = true;
  c.v = quantize(rotate_v(k_pre, c.shape), T, C, p, "v");
  const std::vector<float> rk = reconstruct_keys(c), rv = reconstruct_values(c);
  std::vector<float> expect = k_pre;
  for (int64_t t = 0; t < T; ++t)
    apply_rope(std::span<float>(expect).subspan(static_cast<size_t>(t * C), C), H, d, t, 1e4f);
  for (size_t i = 0; i < rk.size(); ++i) {
    CHECK(rk[i] == Approx(expect[i]).margin(0.02));
    CHECK(rv[i] == Approx(k_pre[i]).margin(0.02));
  }
}

TEST_CASE("attention: causal fp64 attention is row-stochastic and zero above the diagonal") {
  const int64_t T = 7, Hq = 2, Hkv = 1, d = 4;
  const std::vector<float> q = wave(T * Hq * d, 1.0f, 0.0f), k = wave(T * Hkv * d, 1.0f, 1.0f);
  const std::vector<double> a = causal_attention_f64(q, k, T, Hq, Hkv, d, 1);
  for (int64_t i = 0; i < T; ++i) {
    double sum = 0.0;
    for (int64_t j = 0; j < T; ++j) {
      if (j > i) CHECK(a[i * T + j] == 0.0);
      sum += a[i * T + j];
    }
    CHECK(sum == Approx(1.0).epsilon(1e-14));
  }
  CHECK_THROWS_AS(causal_attention_f64(q, k, T, Hq, Hkv, d, 2), Error);
}

TEST_CASE("attention: bad caches and queries are errors") {
  DecodeCache c = quantized_cache(5, 2, 8, 4);
  const std::vector<float> q(16, 0.5f);
  CHECK_THROWS_AS(attention_decode(q, 3, c), Error);                       // not a multiple
  CHECK_THROWS_AS(attention_decode(std::vector<float>(15), 2, c), Error);  // size
  std::vector<float> nan_q = q;
  nan_q[3] = NAN;
  CHECK_THROWS_AS(attention_decode(nan_q, 2, c), Error);
  DecodeCache wrong = c;
  wrong.shape.tokens = 6;  // codes for 5 tokens
  CHECK_THROWS_AS(attention_decode(q, 2, wrong), Error);
  DecodeCache empty;
  empty.shape = {0, 2, 8};
  CHECK_THROWS_AS(attention_decode(q, 2, empty), Error);
  DecodeCache headless = c;
  headless.shape.heads = 0;  // q_heads % 0 must not be evaluated (it was a SIGFPE)
  CHECK_THROWS_WITH(attention_decode(q, 2, headless), Catch::Contains("heads >= 1"));
  CHECK_THROWS_WITH(attention_decode_oracle(q, 2, headless), Catch::Contains("heads >= 1"));
  DecodeCache kept = c;
  kept.kept = {1, 0, 0, 0, 0};  // kept without fp16 rows
  CHECK_THROWS_AS(reconstruct_keys(kept), Error);
  DecodeCache outlier = c;
  outlier.k_outliers.index = {1000};
  outlier.k_outliers.value = {0};
  CHECK_THROWS_AS(reconstruct_keys(outlier), Error);
}
