// The CUDA backend against the reference backend: every exact op bit for bit (docs/spec.md §1-§5)
// over head_dim 64/128/256, tokens 1/7/128/4099, bits {1, 2, 3, 4, 8}, both axes, both zero
// points, F16/BF16/F32 input; attention_decode (both of its paths) within 1e-3 of the fp64
// oracle (docs/spec.md §7). Without a CUDA device the binary prints "SKIP: no CUDA device" and
// exits 77, which meson counts as skipped.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "backends/backend.h"
#include "backends/cuda/cuda_backend.h"
#include "backends/reference_backend.h"
#include "reference/attention.h"
#include "reference/error.h"
#include "reference/half.h"
#include "verify/compare.h"

namespace kvq {
namespace {

// Runs before Catch's main: no device, no tests.
const bool kDevicePresent = [] {
  const BackendEntry e = cuda_backend_entry();
  if (!e.available) {
    std::printf("SKIP: %s\n", e.detail.c_str());
    std::fflush(stdout);
    std::exit(77);
  }
  std::printf("cuda: %s\n", e.detail.c_str());
  return true;
}();

const Backend& ref() {
  static const std::unique_ptr<Backend> r = make_reference_backend();
  return *r;
}
const Backend& gpu() {
  static const std::unique_ptr<Backend> g = cuda_backend_entry().make();
  return *g;
}

// K/V-like data: N(0,1), outlier channels (x30), one massive token (x100), exact +0 and -0,
// repeated values (ties at min/max), values on a coarse grid (exact half-way codes).
std::vector<float> make_data(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, 99);
  std::vector<float> x(static_cast<size_t>(rows * cols));
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t c = 0; c < cols; ++c) {
      float v = normal(rng);
      if (c % 37 == 5) v *= 30.0f;
      if (t == 3) v *= 100.0f;
      const int r = pick(rng);
      if (r == 0) v = 0.0f;
      if (r == 1) v = -0.0f;
      if (r == 2) v = 1.5f;
      if (r == 3) v = std::round(v * 4.0f) / 4.0f;
      x[static_cast<size_t>(t * cols + c)] = v;
    }
  return x;
}

std::vector<int32_t> shuffled_perm(int64_t channels, uint32_t seed) {
  std::vector<int32_t> perm(static_cast<size_t>(channels));
  std::iota(perm.begin(), perm.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(perm.begin(), perm.end(), rng);
  return perm;
}

std::string shape_name(int64_t tokens, int64_t heads, int64_t d) {
  return "[" + std::to_string(tokens) + ", " + std::to_string(heads) + ", " + std::to_string(d) +
         "]";
}

// "" when `c` passed, else what differs: REQUIRE(mismatch(...) == "") prints it on failure.
std::string mismatch(const Comparison& c, const std::string& what) {
  if (c.passed()) return "";
  std::ostringstream o;
  o << what << ": " << c.mismatches << " mismatches, first at " << c.first_mismatch << " ("
    << c.where << ") expected " << c.expected << " got " << c.got;
  return o.str();
}

// The shapes of the AVX tests: head_dim 64/128/256 at small token counts, 4099 at d = 128.
struct Shape3 {
  int64_t tokens, heads, d;
};
std::vector<Shape3> kv_shapes() {
  std::vector<Shape3> out;
  for (int64_t d : {64, 128, 256})
    for (int64_t t : {1, 7, 128}) out.push_back({t, 8, d});
  out.push_back({4099, 8, 128});
  return out;
}

TEST_CASE("cuda: fwht equals the reference bitwise for every size 2..32768") {
  for (int m = 1; m <= 15; ++m) {
    const int n = 1 << m;
    for (int64_t rows : {int64_t{1}, int64_t{7}, int64_t{4099} * 128 / n + 1}) {
      if (n > 4096 && rows > 7) continue;
      std::vector<float> x = make_data(rows, n, 100 + m);
      std::vector<float> a = x, b = x;
      ref().fwht(a, n);
      gpu().fwht(b, n);
      REQUIRE(mismatch(compare_bitwise(a, b),
                       "fwht n=" + std::to_string(n) + " rows=" + std::to_string(rows)) == "");
    }
  }
}

TEST_CASE("cuda: fwht rejects a size that is not a power of two") {
  std::vector<float> x(12, 1.0f);
  REQUIRE_THROWS_AS(gpu().fwht(x, 12), Error);
  std::vector<float> y(10, 1.0f);
  REQUIRE_THROWS_AS(gpu().fwht(y, 4), Error);
}

TEST_CASE("cuda: reorder, rotate_k and rotate_v equal the reference bitwise") {
  for (const Shape3& s : kv_shapes()) {
    const KvShape shape{s.tokens, s.heads, s.d};
    const std::vector<float> x = make_data(s.tokens, shape.channels(), 7);
    const std::vector<int32_t> perm = shuffled_perm(shape.channels(), 11);
    const std::string name = shape_name(s.tokens, s.heads, s.d);
    REQUIRE(mismatch(
                compare_bitwise(ref().reorder(x, s.tokens, perm), gpu().reorder(x, s.tokens, perm)),
                "reorder " + name) == "");
    for (bool with_perm : {false, true}) {
      RotationParams p;
      p.head_group = 4;
      if (with_perm) p.perm = perm;
      REQUIRE(mismatch(compare_bitwise(ref().rotate_k(x, shape, p), gpu().rotate_k(x, shape, p)),
                       "rotate_k " + name + (with_perm ? " reordered" : "")) == "");
    }
    REQUIRE(mismatch(compare_bitwise(ref().rotate_v(x, shape), gpu().rotate_v(x, shape)),
                     "rotate_v " + name) == "");
  }
}

TEST_CASE("cuda: reorder rejects a repeated channel") {
  std::vector<float> x(8, 1.0f);
  const std::vector<int32_t> perm{0, 1, 1, 3};
  REQUIRE_THROWS_WITH(gpu().reorder(x, 2, perm), Catch::Contains("repeats channel"));
}

TEST_CASE("cuda: quantize and dequantize equal the reference bitwise (bits, axes, zero points)") {
  for (const Shape3& s : kv_shapes()) {
    const int64_t rows = s.tokens, cols = s.heads * s.d;
    const std::vector<float> x = make_data(rows, cols, 21);
    for (int bits : {1, 2, 3, 4, 8})
      for (Axis axis : {Axis::Token, Axis::Channel})
        for (ZeroPoint zp : {ZeroPoint::Float, ZeroPoint::Int}) {
          if (rows == 4099 && zp == ZeroPoint::Int && bits != 2) continue;  // keep it quick
          QuantParams p;
          p.bits = bits;
          p.axis = axis;
          p.zero_point = zp;
          p.clip = bits == 2 ? 0.8f : 1.0f;
          const std::string name = shape_name(s.tokens, s.heads, s.d) + " b" +
                                   std::to_string(bits) +
                                   (axis == Axis::Token ? " token" : " channel") +
                                   (zp == ZeroPoint::Float ? " float" : " int");
          const Quantized a = ref().quantize(x, rows, cols, p);
          const Quantized b = gpu().quantize(x, rows, cols, p);
          REQUIRE(mismatch(compare_quantized(a, b), "quantize " + name) == "");
          REQUIRE(mismatch(compare_bitwise(ref().dequantize(a), gpu().dequantize(a)),
                           "dequantize " + name) == "");
        }
  }
}

TEST_CASE("cuda: quantize with a tail group (G = 100) and G larger than the axis") {
  const std::vector<float> x = make_data(131, 8 * 64, 31);
  for (int64_t group : {100, 4096})
    for (Axis axis : {Axis::Token, Axis::Channel})
      for (int bits : {1, 3, 8}) {
        QuantParams p;
        p.bits = bits;
        p.group = group;
        p.axis = axis;
        REQUIRE(
            mismatch(
                compare_quantized(ref().quantize(x, 131, 512, p), gpu().quantize(x, 131, 512, p)),
                "quantize G=" + std::to_string(group) + " b" + std::to_string(bits)) == "");
      }
}

TEST_CASE("cuda: quantize: exact half-way codes round to even like the reference") {
  // lo = 0, hi = 3 at 2 bits: s = 1, so 0.5, 1.5 and 2.5 are exact ties (rne -> 0, 2, 2).
  std::vector<float> x;
  for (int i = 0; i < 128; ++i) x.push_back(static_cast<float>(i % 7) * 0.5f);
  x[0] = 0.0f;
  x[1] = 3.0f;
  QuantParams p;
  p.bits = 2;
  const Quantized a = ref().quantize(x, 1, 128, p);
  const Quantized b = gpu().quantize(x, 1, 128, p);
  REQUIRE(mismatch(compare_quantized(a, b), "ties") == "");
  // Independent check of the hand-worked codes: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2.
  const std::vector<uint8_t> codes = unpack_all(b);
  CHECK(codes[3] == 2);  // 3 * 0.5 = 1.5
  CHECK(codes[5] == 2);  // 5 * 0.5 = 2.5
  CHECK(codes[8] == 0);  // (8 % 7) * 0.5 = 0.5
}

TEST_CASE("cuda: quantize: a zero minimum keeps the sign of the first zero in group order") {
  for (float first : {0.0f, -0.0f}) {
    std::vector<float> x(256, 1.0f);
    x[40] = first;
    x[41] = -first;
    x[200] = 2.0f;
    QuantParams p;
    p.group = 256;
    const Quantized a = ref().quantize(x, 1, 256, p);
    const Quantized b = gpu().quantize(x, 1, 256, p);
    REQUIRE(mismatch(compare_quantized(a, b), "signed zero") == "");
    CHECK(b.zero[0] == float_to_half(first));
  }
}

TEST_CASE("cuda: quantize rejects non-finite input and an fp16-overflowing scale") {
  std::vector<float> x(256, 1.0f);
  x[17] = std::nanf("");
  QuantParams p;
  REQUIRE_THROWS_WITH(gpu().quantize(x, 2, 128, p), Catch::Contains("index 17"));
  std::vector<float> y(256, 0.0f);
  y[130] = 1e9f;
  REQUIRE_THROWS_WITH(gpu().quantize(y, 2, 128, p), Catch::Contains("group 1"));
}

// make_data of a [tokens, heads, d] shape as F16, BF16 and F32 views (in that order).
struct TypedInputs {
  std::vector<float> x;
  std::vector<uint16_t> x16, xb16;
  std::vector<TensorView> views;
  TypedInputs(const Shape3& s, uint32_t seed) : x(make_data(s.tokens, s.heads * s.d, seed)) {
    for (float v : x) x16.push_back(float_to_half(v)), xb16.push_back(float_to_bf16(v));
    const Shape dims{s.tokens, s.heads, s.d};
    views = {{x16.data(), DType::F16, dims}, {xb16.data(), DType::BF16, dims},
             {x.data(), DType::F32, dims}};
  }
};

TEST_CASE("cuda: rotate_quantize equals the reference bitwise (F16, BF16, F32; all rotations)") {
  for (const Shape3& s : kv_shapes()) {
    const KvShape shape{s.tokens, s.heads, s.d};
    const TypedInputs in(s, 41);
    const std::vector<TensorView>& views = in.views;
    for (size_t vi = 0; vi < views.size(); ++vi)
      for (AppendRotation rot :
           {AppendRotation::KeyGrouped, AppendRotation::PerHead, AppendRotation::None})
        for (int bits : {1, 2, 3, 4, 8})
          for (Axis axis : {Axis::Token, Axis::Channel}) {
            if (vi > 0 && bits != 2 && bits != 3) continue;  // dtype sweep at two widths
            if (s.tokens == 4099 && axis == Axis::Channel && bits != 2) continue;
            RotateQuantizeParams p;
            p.rotation = rot;
            p.rotation_params.head_group = 4;
            p.rotation_params.perm = shuffled_perm(shape.channels(), 5);
            p.quant.bits = bits;
            p.quant.axis = axis;
            p.quant.clip = bits == 2 ? 0.8f : 1.0f;
            const std::string name =
                shape_name(s.tokens, s.heads, s.d) + " " + dtype_name(views[vi].dtype) + " rot" +
                std::to_string(static_cast<int>(rot)) + " b" + std::to_string(bits) +
                (axis == Axis::Token ? " token" : " channel");
            REQUIRE(mismatch(compare_quantized(reference_rotate_quantize(views[vi], shape, p),
                                               gpu().rotate_quantize(views[vi], shape, p)),
                             "rotate_quantize " + name) == "");
          }
  }
}

// The row kernel (rows of 1024/2048/4096 channels, G = 128, 2 or 4 bits): grouped FWHTs of
// 512 and 1024 (its second register pass) and, with 16 or 32 heads per group, 2048 and 4096
// (the third pass, across the team's warps), both zero points, clip 0.8 and 1.0, every input
// type; 3000 rows of 4096 (more rows than the grid's teams, so each team loads its next row
// while computing and both shared buffers alternate) for the benchmark's form.
TEST_CASE("cuda: rotate_quantize (row kernel shapes) equals the reference bitwise") {
  struct Case {
    Shape3 s;
    int64_t head_group;
  };
  for (const auto& [s, head_group] :
       {Case{{37, 32, 128}, 4}, Case{{19, 8, 128}, 8}, Case{{11, 16, 128}, 4},
        Case{{13, 32, 128}, 32}, Case{{9, 16, 128}, 16}, Case{{3000, 32, 128}, 4}}) {
    const KvShape shape{s.tokens, s.heads, s.d};
    const TypedInputs in(s, 43);
    const std::vector<TensorView>& views = in.views;
    for (size_t vi = 0; vi < views.size(); ++vi)
      for (AppendRotation rot :
           {AppendRotation::KeyGrouped, AppendRotation::PerHead, AppendRotation::None})
        for (int bits : {2, 4})
          for (ZeroPoint zp : {ZeroPoint::Float, ZeroPoint::Int})
            for (bool with_perm : {true, false}) {
              if (s.tokens == 3000 && (vi == 2 || rot != AppendRotation::KeyGrouped ||
                                       bits != 2 || zp != ZeroPoint::Float || !with_perm))
                continue;
              RotateQuantizeParams p;
              p.rotation = rot;
              p.rotation_params.head_group = head_group;
              if (with_perm) p.rotation_params.perm = shuffled_perm(shape.channels(), 6);
              p.quant.bits = bits;
              p.quant.zero_point = zp;
              p.quant.clip = bits == 2 ? 0.8f : 1.0f;
              const std::string name =
                  shape_name(s.tokens, s.heads, s.d) + " g" + std::to_string(head_group) + " " +
                  dtype_name(views[vi].dtype) + " rot" + std::to_string(static_cast<int>(rot)) + " b" + std::to_string(bits) +
                  (zp == ZeroPoint::Int ? " int" : " float") + (with_perm ? " perm" : "");
              REQUIRE(mismatch(compare_quantized(reference_rotate_quantize(views[vi], shape, p),
                                                 gpu().rotate_quantize(views[vi], shape, p)),
                               "rotate_quantize " + name) == "");
            }
  }
}

// Codes at and around every rounding threshold: the row kernel finds codes by comparing
// t = x - z with (k + 1/2) s instead of dividing, so each group holds x = z + (k + 1/2) s
// exactly (ties, rounded to the even code) and its neighbours 1 and 2 ulps away, for 32 scales.
TEST_CASE("cuda: rotate_quantize codes at half-integer quotients equal the reference") {
  const int64_t tokens = 3, heads = 32, d = 128, cols = heads * d;
  for (int bits : {2, 4}) {
    const int maxq = (1 << bits) - 1;
    std::vector<float> x(static_cast<size_t>(tokens * cols));
    for (int64_t g = 0; g < tokens * cols / 128; ++g) {
      const float s = half_to_float(float_to_half(0.001f + 0.0137f * static_cast<float>(g)));
      float* v = x.data() + g * 128;
      const float z = -1.0f;
      for (int i = 0; i < 128; ++i) v[i] = z;
      v[1] = z + static_cast<float>(maxq) * s;  // hi: range / maxq = s exactly
      int i = 2;
      for (int k = 0; k < maxq; ++k)
        for (int ulps = -2; ulps <= 2; ++ulps) {
          float y = z + (static_cast<float>(k) + 0.5f) * s;
          for (int u = 0; u < std::abs(ulps); ++u)
            y = std::nextafter(y, ulps > 0 ? 1e30f : -1e30f);
          v[i++] = y;
        }
    }
    RotateQuantizeParams p;
    p.rotation = AppendRotation::None;
    p.quant.bits = bits;
    p.quant.clip = 1.0f;
    const TensorView view{x.data(), DType::F32, {tokens, heads, d}};
    const KvShape shape{tokens, heads, d};
    REQUIRE(mismatch(compare_quantized(reference_rotate_quantize(view, shape, p),
                                       gpu().rotate_quantize(view, shape, p)),
                     "rotate_quantize thresholds b" + std::to_string(bits)) == "");
  }
}

TEST_CASE("cuda: rotate_quantize rejects a non-finite fp16 input naming its index") {
  std::vector<uint16_t> x(4 * 8 * 64, float_to_half(1.0f));
  x[300] = 0x7C00u;  // +inf
  RotateQuantizeParams p;
  REQUIRE_THROWS_WITH(gpu().rotate_quantize({x.data(), DType::F16, {4, 8, 64}}, {4, 8, 64}, p),
                      Catch::Contains("index 300"));
}

TEST_CASE("cuda: token_absmax and expert_statistics equal the reference") {
  for (int64_t tokens : {1, 7, 128, 4099})
    for (int64_t hidden : {64, 1000, 4096}) {
      const std::vector<float> h = make_data(tokens, hidden, 51);
      const TokenAbsmax a = ref().token_absmax(h, tokens, hidden);
      const TokenAbsmax b = gpu().token_absmax(h, tokens, hidden);
      REQUIRE(mismatch(compare_bitwise(a.absmax, b.absmax), "token_absmax") == "");
      REQUIRE(mismatch(compare_i32(a.argmax, b.argmax), "token_absmax argmax") == "");
    }
  for (int64_t tokens : {0, 1, 7, 4099}) {
    const int64_t top_k = 2, experts = 64;
    std::mt19937 rng(61);
    std::vector<int32_t> ids, argmax;
    std::vector<float> absmax;
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t k = 0; k < top_k; ++k) {
        ids.push_back(static_cast<int32_t>((rng() % 40 + k) % experts));
        absmax.push_back(static_cast<float>(rng() % 50) * 0.5f);  // many ties
        argmax.push_back(static_cast<int32_t>(rng() % 256));
      }
    const auto a = ref().expert_statistics(ids, absmax, argmax, tokens, top_k, experts);
    const auto b = gpu().expert_statistics(ids, absmax, argmax, tokens, top_k, experts);
    REQUIRE(a.size() == b.size());
    for (size_t e = 0; e < a.size(); ++e) {
      INFO("expert " << e << " tokens " << tokens);
      CHECK(a[e].max_abs == b[e].max_abs);
      CHECK(a[e].token == b[e].token);
      CHECK(a[e].channel == b[e].channel);
    }
  }
}

// A decode cache of `tokens` random K/V rows quantized as a method would store them.
DecodeCache make_cache(int64_t tokens, int64_t heads, int64_t d, int bits, KeyRotation krot,
                       bool vrot, bool pre_rope, bool with_kept, uint32_t seed) {
  DecodeCache c;
  c.shape = {tokens, heads, d};
  c.k_rotation = krot;
  c.v_per_head_hadamard = vrot;
  c.k_pre_rope = pre_rope;
  const int64_t cols = heads * d;
  std::vector<float> k = make_data(tokens, cols, seed);
  std::vector<float> v = make_data(tokens, cols, seed + 1);
  for (float& x : k) x *= 0.3f;
  const KvShape shape{tokens, heads, d};
  std::vector<float> ks = k, vs = v;
  if (krot == KeyRotation::PerHeadHadamard) ks = rotate_v(k, shape);
  if (krot == KeyRotation::GroupedHadamard) {
    c.k_rotation_params.head_group = 2;
    c.k_rotation_params.perm = shuffled_perm(cols, seed + 2);
    ks = rotate_k(k, shape, c.k_rotation_params);
  }
  if (vrot) vs = rotate_v(v, shape);
  QuantParams p;
  p.bits = bits;
  c.k = quantize(ks, tokens, cols, p);
  c.v = quantize(vs, tokens, cols, p);
  if (with_kept) {
    c.kept.assign(static_cast<size_t>(tokens), 0);
    c.k_fp16.assign(static_cast<size_t>(tokens * cols), 0);
    c.v_fp16.assign(static_cast<size_t>(tokens * cols), 0);
    for (int64_t t = 0; t < tokens; ++t) {
      if (!(t < 4 || t >= tokens - 16)) continue;  // sinks and a recent window
      c.kept[static_cast<size_t>(t)] = 1;
      for (int64_t i = t * cols; i < (t + 1) * cols; ++i) {
        c.k_fp16[static_cast<size_t>(i)] = float_to_half(k[static_cast<size_t>(i)] * 3.0f);
        c.v_fp16[static_cast<size_t>(i)] = float_to_half(v[static_cast<size_t>(i)]);
      }
    }
  }
  return c;
}

// "" when the GPU's decode attention is within 1e-3 of the fp64 oracle, else the error:
// REQUIRE(attention_problem(...) == "") prints it on failure.
std::string attention_problem(const DecodeCache& c, int64_t q_heads, const std::string& name) {
  const std::vector<float> q = make_data(1, q_heads * c.shape.head_dim, 99);
  const std::vector<double> oracle = attention_decode_oracle(q, q_heads, c);
  const std::vector<float> got = gpu().attention_decode(q, q_heads, c);
  const Comparison cmp = compare_tolerance(oracle, got, 1e-3);
  if (cmp.passed() && cmp.max_rel_error <= 1e-3) return "";
  std::ostringstream o;
  o << name << ": max rel err " << cmp.max_rel_error << ", nmse " << cmp.nmse;
  return o.str();
}

TEST_CASE("cuda: attention_decode (packed path) within 1e-3 of the fp64 oracle") {
  for (int bits : {1, 2, 4, 8})
    for (int64_t q_heads : {8, 16, 32, 24})
      for (bool rotated : {false, true})
        for (bool kept : {false, true}) {
          const int64_t tokens = bits == 2 ? 3000 : 700;
          const DecodeCache c = make_cache(
              tokens, 8, 128, bits, rotated ? KeyRotation::PerHeadHadamard : KeyRotation::None,
              rotated, false, kept, 7 + bits);
          REQUIRE(attention_problem(c, q_heads,
                                    "packed b" + std::to_string(bits) + " qh" +
                                        std::to_string(q_heads) + (rotated ? " H" : "") +
                                        (kept ? " kept" : "")) == "");
        }
}

TEST_CASE("cuda: attention_decode (reconstructed path) within 1e-3 of the fp64 oracle") {
  // Pre-RoPE grouped rotation (RotateKV), 3-bit (no packed kernel), channel-axis keys.
  REQUIRE(attention_problem(
              make_cache(600, 8, 64, 2, KeyRotation::GroupedHadamard, true, true, true, 3), 32,
              "rotatekv pre-rope") == "");
  REQUIRE(attention_problem(make_cache(600, 4, 128, 3, KeyRotation::None, false, false, true, 4), 4,
                            "3-bit") == "");
  DecodeCache c = make_cache(300, 4, 256, 4, KeyRotation::None, false, false, false, 5);
  QuantParams p;
  p.bits = 4;
  p.axis = Axis::Channel;
  c.k = quantize(reconstruct_keys(c), 300, 4 * 256, p);
  REQUIRE(attention_problem(c, 8, "channel-axis K") == "");
}

TEST_CASE("cuda: attention_decode rejects q_heads that are not a multiple of the KV heads") {
  const DecodeCache c = make_cache(16, 4, 64, 2, KeyRotation::None, false, false, false, 1);
  const std::vector<float> q(6 * 64, 0.5f);
  REQUIRE_THROWS_WITH(gpu().attention_decode(q, 6, c), Catch::Contains("multiple"));
}

}  // namespace
}  // namespace kvq
