// KV-cache methods (docs/spec.md §8): bits per element against hand counts of the stored layout,
// finite and accurate reconstructions, and the incremental cache against whole-layer apply.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <vector>

#include "reference/attention.h"
#include "reference/error.h"
#include "reference/half.h"
#include "reference/methods.h"
#include "reference/quantize.h"
#include "reference/rotation.h"

using namespace kvq;

namespace {

constexpr int64_t H = 4, D = 32, C = H * D, HQ = 8, HIDDEN = 64;

float wave(int64_t i, float phase) {
  const auto x = static_cast<float>(i);
  return std::sin(0.37f * x + phase) + 0.3f * std::cos(1.91f * static_cast<float>(i * i % 97));
}

// One synthetic layer: K with two outlier channels, massive activations at tokens 0 and 100.
struct Layer {
  int64_t tokens;
  std::vector<float> k_pre, k, v, hidden, q;
  explicit Layer(int64_t T) : tokens(T) {
    k_pre.resize(static_cast<size_t>(T * C));
    v.resize(k_pre.size());
    for (int64_t i = 0; i < T * C; ++i) {
      const int64_t c = i % C;
      k_pre[static_cast<size_t>(i)] = wave(i, 0.2f) * (c == 5 || c == 77 ? 12.0f : 1.0f);
      v[static_cast<size_t>(i)] = 0.5f * wave(i, 1.3f);
    }
    k = k_pre;
    for (int64_t t = 0; t < T; ++t)
      apply_rope(std::span<float>(k).subspan(static_cast<size_t>(t * C), C), H, D, t, 10000.0f);
    hidden.resize(static_cast<size_t>(T * HIDDEN));
    for (int64_t i = 0; i < T * HIDDEN; ++i) hidden[static_cast<size_t>(i)] = 0.5f * wave(i, 2.1f);
    hidden[3] = 400.0f;
    if (T > 100) hidden[static_cast<size_t>(100 * HIDDEN + 3)] = -350.0f;
    q.resize(static_cast<size_t>(T * HQ * D));
    for (int64_t i = 0; i < T * HQ * D; ++i) q[static_cast<size_t>(i)] = wave(i, 0.9f);
  }
  LayerTensors view() const {
    LayerTensors t;
    t.shape = {tokens, H, D};
    t.q_heads = HQ;
    t.hidden_size = HIDDEN;
    t.k = k;
    t.k_pre_rope = k_pre;
    t.v = v;
    t.hidden_in = hidden;
    t.q = q;
    return t;
  }
};

MethodParams params_for(Method m, int bits) {
  MethodParams p;
  p.method = m;
  p.bits = bits;
  return p;
}

AppliedLayer apply_one(const Layer& layer, const MethodParams& p, int64_t index = 0,
                       int64_t layers = 1) {
  std::vector<LayerTensors> all(static_cast<size_t>(layers), layer.view());
  const Calibration calib = calibrate(all, p);
  return apply_method(layer.view(), index, layers, calib, p);
}

double nmse(const std::vector<float>& ref, const std::vector<float>& got) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return num / den;
}

const Method kAll[] = {Method::Fp32,     Method::Rtn,           Method::Kivi,  Method::KvQuant,
                       Method::RotateKv, Method::KvSinkKvQuant, Method::AkvqVl};

}  // namespace

TEST_CASE("methods: names round-trip and unknown names are errors") {
  for (Method m : kAll) CHECK(parse_method(method_name(m)) == m);
  CHECK_THROWS_AS(parse_method("quarot"), Error);
  CHECK(method_uses_pre_rope_k(Method::RotateKv));
  CHECK_FALSE(method_uses_pre_rope_k(Method::Kivi));
}

TEST_CASE("methods: bits per element match hand counts of the stored layout") {
  const Layer layer(256);  // 256 tokens x 128 channels = 32768 elements per tensor
  const double n = 32768.0;
  // rtn, 2 bits: per token one group of 128: 32 code bytes + fp16 scale + fp16 zero = 288 bits.
  const AppliedLayer rtn = apply_one(layer, params_for(Method::Rtn, 2));
  CHECK(rtn.k.storage.per_element() == 2.25);
  CHECK(rtn.v.storage.per_element() == 2.25);
  CHECK(apply_one(layer, params_for(Method::Rtn, 4)).k.storage.per_element() == 4.25);
  // kivi, 2 bits, R = 128: K quantizes floor(128 / 128) groups of 128 tokens per channel:
  // 128 x (256 + 32) bits; 128 fp16 tokens x (128 x 16 + 32 index) bits. V the same.
  const AppliedLayer kivi = apply_one(layer, params_for(Method::Kivi, 2));
  CHECK(kivi.k.storage.total() == 128 * 288 + 128 * 2080);
  CHECK(kivi.k.storage.per_element() == 9.25);
  CHECK(kivi.v.storage.per_element() == 9.25);
  // kvquant, 2 bits: token 0 fp16 (2080 bits). K: 255 tokens per channel in groups 128 + 127
  // -> 32 + 32 code bytes, 2 x 32 scale/zero bits, ceil(1.28) + ceil(1.27) = 4 outliers of
  // 48 bits. V: 255 tokens x (288 + 2 outliers x 48).
  const AppliedLayer kvq2 = apply_one(layer, params_for(Method::KvQuant, 2));
  CHECK(kvq2.k.storage.total() == 2080 + 128 * (64 * 8 + 64 + 4 * 48));
  CHECK(kvq2.v.storage.total() == 2080 + 255 * (288 + 96));
  CHECK(kvq2.k.storage.per_element() == (2080 + 128 * (512 + 64 + 192)) / n);
  CHECK(kvq2.k.outliers.index.size() == 512);
  // rotatekv, 2 bits: p pivot tokens fp16, the rest 288 bits each.
  const MethodParams rk = params_for(Method::RotateKv, 2);
  const Calibration rcal = calibrate({layer.view()}, rk);
  const auto p = static_cast<int64_t>(rcal.pivots[0].size());
  CHECK(p >= 2);  // tokens 0 and 100 carry the massive activations
  const AppliedLayer rot = apply_method(layer.view(), 0, 1, rcal, rk);
  CHECK(rot.k.storage.total() == (256 - p) * 288 + p * 2080);
  CHECK(rot.v.storage.total() == (256 - p) * 288 + p * 2080);
  // akvq-vl, TSA layer, all text: every token at 8 bits (128 code bytes + 32) + uint8 map.
  const AppliedLayer tsa = apply_one(layer, params_for(Method::AkvqVl, 2), 0, 2);
  CHECK(tsa.k.storage.total() == 256 * (1024 + 32) + 256 * 8);
  CHECK(tsa.k.storage.per_element() == 8.3125);
  // PSA layer: at most floor(0.01 * 256) = 2 pivots at 8 bits, the rest at 2 bits.
  const AppliedLayer psa = apply_one(layer, params_for(Method::AkvqVl, 2), 1, 2);
  REQUIRE(psa.k.parts.size() == 2);
  const auto hi = static_cast<int64_t>(psa.k.parts[1].tokens.size());
  CHECK(hi >= 1);
  CHECK(hi <= 2);
  CHECK(psa.k.storage.total() == hi * 1056 + (256 - hi) * 288 + 256 * 8);
  CHECK(apply_one(layer, params_for(Method::Fp32, 2)).k.storage.per_element() == 32.0);
}

TEST_CASE("methods: every method reconstructs finite K and V, close at 8 bits") {
  const Layer layer(160);
  for (Method m : kAll)
    for (int bits : {2, 4, 8}) {
      INFO(method_name(m) << " " << bits << " bits");
      const AppliedLayer a = apply_one(layer, params_for(m, bits), 1, 3);
      const auto finite = [](const std::vector<float>& x) {
        return std::all_of(x.begin(), x.end(), [](float e) { return std::isfinite(e); });
      };
      REQUIRE(finite(a.k.dequant));
      REQUIRE(finite(a.v.dequant));
      // K in the original basis, post-RoPE: comparable with the recorded k.
      const double ek = nmse(layer.k, a.k.dequant), ev = nmse(layer.v, a.v.dequant);
      // 2 bits: finite only (per-token RTN on outlier channels is worse than zeros, the
      // failure RotateKV and KIVI address); 4 and 8 bits: bounded error.
      if (bits >= 4) {
        CHECK(ek < (bits == 8 ? 1e-3 : 0.1));
        CHECK(ev < (bits == 8 ? 1e-3 : 0.1));
      }
      if (m == Method::Fp32) CHECK(a.v.dequant == layer.v);
      // The decode cache holds the same reconstruction.
      CHECK(reconstruct_keys(a.cache) == a.k.dequant);
    }
}

TEST_CASE("methods: incremental cache equals whole-layer apply where they agree") {
  struct Case {
    Method method;
    int64_t tokens;
    int64_t layer, layers;
  };
  // kvquant: 257 tokens = token 0 kept + 2 whole groups of 128; kvsink: sinks 0 and 100 + 256.
  const Case cases[] = {{Method::Fp32, 70, 0, 1},      {Method::Rtn, 200, 0, 1},
                        {Method::Kivi, 300, 0, 1},     {Method::KvQuant, 257, 0, 1},
                        {Method::RotateKv, 256, 0, 1}, {Method::KvSinkKvQuant, 258, 0, 1},
                        {Method::AkvqVl, 200, 0, 2},   {Method::AkvqVl, 200, 1, 2}};
  for (const Case& c : cases) {
    INFO(method_name(c.method) << " layer " << c.layer);
    const Layer layer(c.tokens);
    const MethodParams p = params_for(c.method, 2);
    std::vector<LayerTensors> all(static_cast<size_t>(c.layers), layer.view());
    const Calibration calib = calibrate(all, p);
    const AppliedLayer whole = apply_method(layer.view(), c.layer, c.layers, calib, p);
    LayerCalibration lc;
    if (!calib.k_perm.empty()) lc.k_perm = calib.k_perm[0];
    lc.kvsink = calib.kvsink;
    IncrementalCache cache(p, H, D, c.layer, c.layers, lc);
    std::vector<uint8_t> flag(static_cast<size_t>(c.tokens), 0);
    for (int32_t t : whole.k.kept) flag[static_cast<size_t>(t)] = 1;
    if (c.method == Method::AkvqVl) {
      flag.assign(flag.size(), 0);
      for (int32_t t : whole.k.parts.back().tokens) flag[static_cast<size_t>(t)] = 1;
    }
    for (int64_t t = 0; t < c.tokens; ++t) {
      TokenRows r;
      r.k_pre_rope = std::span<const float>(layer.k_pre).subspan(static_cast<size_t>(t * C), C);
      r.k = std::span<const float>(layer.k).subspan(static_cast<size_t>(t * C), C);
      r.v = std::span<const float>(layer.v).subspan(static_cast<size_t>(t * C), C);
      r.position = t;
      // Whole-sequence decisions (pivots, KVSink, PSA) passed in; window/group logic is the
      // cache's own (kivi's kept tokens are not sinks).
      const bool own = c.method == Method::Kivi || c.method == Method::Rtn;
      r.sink = own ? -1 : flag[static_cast<size_t>(t)];
      cache.append(r);
    }
    REQUIRE(cache.size() == c.tokens);
    CHECK(std::vector<float>(cache.keys().begin(), cache.keys().end()) == whole.k.dequant);
    CHECK(std::vector<float>(cache.values().begin(), cache.values().end()) == whole.v.dequant);
    CHECK(cache.k_storage().total() == whole.k.storage.total());
    CHECK(cache.v_storage().total() == whole.v.storage.total());
  }
}

TEST_CASE("methods: incremental cache makes its own token decisions") {
  const Layer layer(40);
  auto run = [&](Method m) {
    IncrementalCache cache(params_for(m, 2), H, D, 0, 1, {});
    for (int64_t t = 0; t < 40; ++t) {
      TokenRows r;
      r.k_pre_rope = std::span<const float>(layer.k_pre).subspan(static_cast<size_t>(t * C), C);
      r.k = std::span<const float>(layer.k).subspan(static_cast<size_t>(t * C), C);
      r.v = std::span<const float>(layer.v).subspan(static_cast<size_t>(t * C), C);
      r.hidden_in =
          std::span<const float>(layer.hidden).subspan(static_cast<size_t>(t * HIDDEN), HIDDEN);
      r.position = t;
      cache.append(r);
    }
    return cache;
  };
  const IncrementalCache kv = run(Method::KvQuant);  // PFN: token 0
  CHECK(kv.kept(0));
  CHECK_FALSE(kv.kept(1));
  // kvquant K waits for 128 non-kept tokens: all 40 still fp16 -> 39 x 2080 + 2080 bits.
  CHECK(kv.k_storage().total() == 40 * 2080);
  const IncrementalCache rot = run(Method::RotateKv);  // online pivots: token 0 has 400
  CHECK(rot.kept(0));
  CHECK_THROWS_AS(rot.kept(40), Error);
}

TEST_CASE("methods: bad inputs are errors naming the tensor") {
  Layer layer(32);
  const MethodParams rtn = params_for(Method::Rtn, 2);
  LayerTensors t = layer.view();
  t.v = std::span<const float>(layer.v).subspan(0, 100);
  CHECK_THROWS_WITH(apply_method(t, 0, 1, {}, rtn), Catch::Contains("layers.0.v"));
  layer.k[17] = NAN;
  CHECK_THROWS_WITH(apply_method(layer.view(), 0, 1, {}, rtn), Catch::Contains("layers.0.k"));
  layer.k[17] = 0.0f;
  LayerTensors no_pre = layer.view();
  no_pre.k_pre_rope = {};
  CHECK_THROWS_WITH(calibrate({no_pre}, params_for(Method::RotateKv, 2)),
                    Catch::Contains("k_pre_rope"));
  CHECK_THROWS_AS(apply_method(layer.view(), 0, 1, {}, params_for(Method::RotateKv, 2)), Error);
  CHECK_THROWS_AS(apply_method(layer.view(), 0, 1, {}, params_for(Method::Rtn, 5)), Error);
  CHECK_THROWS_AS(apply_method(layer.view(), 1, 1, {}, rtn), Error);
  Layer three(8);
  LayerTensors odd = three.view();
  odd.shape = {8, 3, 32};  // 3 heads not divisible by head_group 4
  odd.k_pre_rope = std::span<const float>(three.k_pre).subspan(0, 8 * 96);
  odd.v = std::span<const float>(three.v).subspan(0, 8 * 96);
  CHECK_THROWS_AS(calibrate({odd}, params_for(Method::RotateKv, 2)), Error);
  IncrementalCache cache(rtn, H, D, 0, 1, {});
  TokenRows r;
  r.k = std::span<const float>(layer.k).subspan(0, C - 1);
  r.v = std::span<const float>(layer.v).subspan(0, C);
  CHECK_THROWS_AS(cache.append(r), Error);
  std::vector<float> huge(C, 1e6f);  // overflows fp16
  r.k = huge;
  CHECK_THROWS_AS(cache.append(r), Error);
  CHECK(cache.size() == 0);
  CHECK_THROWS_AS(IncrementalCache(rtn, 0, D, 0, 1, {}), Error);
}

TEST_CASE("methods: rotatekv reorder = false keeps the channel order, reorder = true moves it") {
  const Layer layer(256);
  MethodParams p = params_for(Method::RotateKv, 2);
  const Calibration sorted = calibrate({layer.view()}, p);
  std::vector<int32_t> identity(static_cast<size_t>(C));
  for (int32_t c = 0; c < C; ++c) identity[static_cast<size_t>(c)] = c;
  // The planted outlier channels 5 and 77 make the ascending signed-sum order differ from 0..C-1.
  REQUIRE(sorted.k_perm.size() == 1);
  CHECK(sorted.k_perm[0] != identity);
  p.reorder = false;
  const Calibration plain = calibrate({layer.view()}, p);
  CHECK(plain.k_perm[0] == identity);
  CHECK(plain.pivots == sorted.pivots);  // the pivots do not depend on the reordering
  // Without reordering, K's stored codes are those of the rotated rows in channel order: the
  // same as apply with the sorted calibration whose permutation is replaced by the identity.
  Calibration swapped = sorted;
  swapped.k_perm[0] = identity;
  MethodParams with = params_for(Method::RotateKv, 2);
  CHECK(apply_method(layer.view(), 0, 1, plain, p).k.dequant ==
        apply_method(layer.view(), 0, 1, swapped, with).k.dequant);
}

TEST_CASE("methods: rotatekv clips a 2-bit V group at 0.8 (hand-worked)") {
  // One token, one head of d = 4, G = 4, no pivot kept: V = [4, -1, -3, 0]. Per-head FWHT
  // (docs/spec.md §1, n = 4, scale 1/2): [(4-1-3+0), (4+1-3-0), (4-1+3-0), (4+1+3+0)] / 2
  // = [0, 1, 3, 4]. docs/spec.md §3 with r = 0.8 (§8: rotatekv at 2 bits, V as K):
  //   lo = 0 * 0.8 = 0, hi = 4 * 0.8f = 3.2000000477
  //   scale16 = fp16(3.2000000477 / 3 = 1.0666666826) = 1 + 68/1024 = 1.06640625 (0x3C44)
  //   codes = rne([0, 1, 3, 4] / 1.06640625) = rne([0, 0.938, 2.813, 3.751]) -> [0, 1, 3, 3]
  //   (clamped at 3), packed 0 | 1 << 2 | 3 << 4 | 3 << 6 = 244.
  // Without the clip, hi = 4, scale16 = fp16(1.3333) = 1.3330078125, codes [0, 1, 2, 3] = 228.
  const std::vector<float> k = {1.0f, 2.0f, 3.0f, 4.0f}, v = {4.0f, -1.0f, -3.0f, 0.0f};
  const std::vector<float> hidden = {1.0f, 1.0f};
  LayerTensors t;
  t.shape = {1, 1, 4};
  t.hidden_size = 2;
  t.k_pre_rope = k;
  t.v = v;
  t.hidden_in = hidden;
  MethodParams p = params_for(Method::RotateKv, 2);
  p.group = 4;
  p.head_group = 1;
  p.pivot.top_k = 0;  // no pivot token: the one token is quantized
  const AppliedLayer a = apply_method(t, 0, 1, calibrate({t}, p), p);
  REQUIRE(a.v.kept.empty());
  REQUIRE(a.v.parts.size() == 1);
  const Quantized& q = a.v.parts[0].q;
  CHECK(q.params.clip == 0.8f);
  CHECK(q.codes == std::vector<uint8_t>{244});
  CHECK(q.scale == std::vector<uint16_t>{0x3C44});
  CHECK(q.zero == std::vector<uint16_t>{0x0000});
  // At 3 bits the default clip is 1.0: lo = 0, hi = 4, scale16 = fp16(4/7) = 0.5712890625,
  // codes rne([0, 1.75, 5.25, 7.00]) = [0, 2, 5, 7]: 12 bits 0 | 2 << 3 | 5 << 6 | 7 << 9.
  MethodParams p3 = p;
  p3.bits = 3;
  const AppliedLayer b3 = apply_method(t, 0, 1, calibrate({t}, p3), p3);
  REQUIRE(b3.v.parts.size() == 1);
  CHECK(b3.v.parts[0].q.params.clip == 1.0f);
  const uint32_t packed = 0u | 2u << 3 | 5u << 6 | 7u << 9;
  CHECK(b3.v.parts[0].q.codes == std::vector<uint8_t>{static_cast<uint8_t>(packed & 0xff),
                                                      static_cast<uint8_t>(packed >> 8)});
}

TEST_CASE("methods: rotatekv 2-bit V codes equal a separate recomputation with clip 0.8") {
  // The method's V codes against this test's own docs/spec.md §3 quantizer (per token, G = 128 over
  // the per-head FWHT of V, lo and hi scaled by 0.8f), written apart from reference/quantize.cpp.
  const Layer layer(256);
  const MethodParams p = params_for(Method::RotateKv, 2);
  const AppliedLayer a = apply_one(layer, p);
  const std::vector<float> rotated = rotate_v(layer.v, {layer.tokens, H, D});
  const auto recompute = [&](int32_t token, float clip) {
    const float* x = rotated.data() + static_cast<size_t>(token) * C;
    std::vector<uint8_t> codes;
    for (int64_t g0 = 0; g0 < C; g0 += 128) {
      const int64_t n = std::min<int64_t>(128, C - g0);
      float lo = x[g0], hi = x[g0];
      for (int64_t i = 1; i < n; ++i) {
        lo = std::min(lo, x[g0 + i]);
        hi = std::max(hi, x[g0 + i]);
      }
      lo *= clip;
      hi *= clip;
      const float s = half_to_float(float_to_half((hi - lo) / 3.0f));
      const float z = half_to_float(float_to_half(lo));
      for (int64_t i = 0; i < n; ++i) {
        const float u = s == 0.0f ? 0.0f : (x[g0 + i] - z) / s;
        codes.push_back(static_cast<uint8_t>(std::clamp(std::nearbyint(u), 0.0f, 3.0f)));
      }
    }
    return codes;
  };
  int64_t tokens = 0, differ_without_clip = 0;
  for (const DecodeCache::QuantizedRows& part : a.v.parts) {
    const std::vector<uint8_t> got = unpack_all(part.q);
    REQUIRE(got.size() == part.tokens.size() * static_cast<size_t>(C));
    for (size_t r = 0; r < part.tokens.size(); ++r) {
      const std::vector<uint8_t> row(got.begin() + static_cast<std::ptrdiff_t>(r * C),
                                     got.begin() + static_cast<std::ptrdiff_t>((r + 1) * C));
      INFO("token " << part.tokens[r]);
      CHECK(row == recompute(part.tokens[r], 0.8f));
      differ_without_clip += row != recompute(part.tokens[r], 1.0f);
      ++tokens;
    }
  }
  CHECK(tokens == 256 - static_cast<int64_t>(a.v.kept.size()));
  CHECK(tokens > 200);
  CHECK(differ_without_clip > tokens / 2);  // the clip is visible in most rows
}
