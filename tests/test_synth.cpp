// The synthetic generator's planted ground truth is checked with the docs/spec.md rules recomputed
// here from the tensors (fp64), independently of reference/sinks and reference/experts.
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "harness/io/safetensors.h"
#include "harness/recording/synth.h"
#include "reference/error.h"
#include "tests/scratch.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using json = nlohmann::json;

namespace {

std::string temp_path(const std::string& name) {
  const fs::path dir = kvq::testing::scratch_root("synth");
  fs::create_directories(dir);
  return (dir / name).string();
}

std::vector<char> file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string written(const kvq::SynthParams& p, const std::string& name) {
  const std::string path = temp_path(name);
  kvq::write_recording(path, kvq::synthesize(p));
  return path;
}

int64_t meta_int(const kvq::SafetensorsFile& f, const std::string& key) {
  return std::stoll(f.metadata().at(key));
}

std::string layer(int64_t l, const std::string& what) {
  std::string s = "layers.";
  s += std::to_string(l);
  s += '.';
  s += what;
  return s;
}

// numpy.percentile(values, q) with the default linear interpolation.
double percentile_linear(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = (static_cast<double>(v.size()) - 1.0) * q / 100.0;
  const auto lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (pos - static_cast<double>(lo)) * (v[hi] - v[lo]);
}

// docs/spec.md §4 massive tokens of one layer: a_t >= 100 and a_t >= 100 * sorted(a)[T / 2].
std::vector<int64_t> massive_tokens(const std::vector<float>& h, int64_t T, int64_t D) {
  std::vector<double> a(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < D; ++c)
      a[static_cast<size_t>(t)] =
          std::max(a[static_cast<size_t>(t)], std::fabs(static_cast<double>(h[t * D + c])));
  std::vector<double> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[static_cast<size_t>(T / 2)];
  std::vector<int64_t> out;
  for (int64_t t = 0; t < T; ++t)
    if (a[static_cast<size_t>(t)] >= 100.0 && a[static_cast<size_t>(t)] >= 100.0 * median)
      out.push_back(t);
  return out;
}

// docs/spec.md §4 ground truth: score_j = mean over layers l >= 2, heads, queries i >= j + 16 of
// A[i, j] (i + 1), A the causal softmax(q k^T / sqrt(d)) in fp64, for j <= T - 64.
std::vector<double> sink_scores(const kvq::SafetensorsFile& f) {
  const int64_t L = meta_int(f, "num_hidden_layers"), T = meta_int(f, "num_tokens");
  const int64_t H = meta_int(f, "num_attention_heads"), Hkv = meta_int(f, "num_key_value_heads");
  const int64_t d = meta_int(f, "head_dim");
  const int64_t J = T - 64 + 1;  // tokens 0 .. T - 64
  std::vector<double> sum(static_cast<size_t>(J), 0.0);
  std::vector<int64_t> n(static_cast<size_t>(J), 0);
  const double inv_sqrt_d = 1.0 / std::sqrt(static_cast<double>(d));
  for (int64_t l = 2; l < L; ++l) {
    const std::vector<float> q = f.read_f32(layer(l, "q")), k = f.read_f32(layer(l, "k"));
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kvh = h / (H / Hkv);
      std::vector<double> logits(static_cast<size_t>(T));
      for (int64_t i = 0; i < T; ++i) {
        double m = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) {
          double dot = 0.0;
          for (int64_t c = 0; c < d; ++c)
            dot += static_cast<double>(q[(i * H + h) * d + c]) *
                   static_cast<double>(k[(j * Hkv + kvh) * d + c]);
          logits[static_cast<size_t>(j)] = dot * inv_sqrt_d;
          m = std::max(m, logits[static_cast<size_t>(j)]);
        }
        double z = 0.0;
        for (int64_t j = 0; j <= i; ++j) z += std::exp(logits[static_cast<size_t>(j)] - m);
        for (int64_t j = 0; j < J && j + 16 <= i; ++j) {
          const double a = std::exp(logits[static_cast<size_t>(j)] - m) / z;
          sum[static_cast<size_t>(j)] += a * static_cast<double>(i + 1);
          ++n[static_cast<size_t>(j)];
        }
      }
    }
  }
  for (int64_t j = 0; j < J; ++j) sum[static_cast<size_t>(j)] /= static_cast<double>(n[j]);
  return sum;
}

// docs/spec.md §5 with the considered layers l < `considered`: (layer, expert) pairs selected.
std::set<std::pair<int64_t, int64_t>> super_experts(const kvq::SafetensorsFile& f,
                                                    int64_t considered) {
  const int64_t E = meta_int(f, "num_experts");
  std::vector<double> all;
  std::vector<std::vector<double>> m(static_cast<size_t>(considered),
                                     std::vector<double>(static_cast<size_t>(E), 0.0));
  for (int64_t l = 0; l < considered; ++l) {
    const std::vector<int32_t> ids = f.read_i32(layer(l, "experts.ids"));
    const std::vector<float> absmax = f.read_f32(layer(l, "experts.down_absmax"));
    for (size_t i = 0; i < ids.size(); ++i)
      m[l][static_cast<size_t>(ids[i])] =
          std::max(m[l][static_cast<size_t>(ids[i])], static_cast<double>(absmax[i]));
    all.insert(all.end(), m[l].begin(), m[l].end());
  }
  const double p995 = percentile_linear(all, 99.5);
  const double floor_tenth = std::floor(*std::max_element(all.begin(), all.end()) / 10.0);
  std::set<std::pair<int64_t, int64_t>> out;
  for (int64_t l = 0; l < considered; ++l)
    for (int64_t e = 0; e < E; ++e)
      if (m[l][e] > p995 && m[l][e] > floor_tenth) out.emplace(l, e);
  return out;
}

void check_ground_truth(const std::string& path) {
  const auto f = kvq::SafetensorsFile::open(path);
  const int64_t L = meta_int(f, "num_hidden_layers"), T = meta_int(f, "num_tokens");
  const int64_t Hkv = meta_int(f, "num_key_value_heads"), d = meta_int(f, "head_dim");
  const int64_t D = meta_int(f, "hidden_size"), E = meta_int(f, "num_experts");
  const auto sinks = json::parse(f.metadata().at("sink_tokens")).get<std::vector<int64_t>>();
  const auto massive = json::parse(f.metadata().at("massive_tokens")).get<std::vector<int64_t>>();
  const auto channels =
      json::parse(f.metadata().at("massive_channels")).get<std::vector<int64_t>>();
  const int64_t massive_layer = meta_int(f, "massive_layer");
  CHECK(f.metadata().at("model") == "synthetic");
  CHECK(std::find(massive.begin(), massive.end(), 0) != massive.end());
  CHECK(std::any_of(massive.begin(), massive.end(), [](int64_t t) { return t > 0; }));

  // Massive activations (docs/spec.md §4): exactly the planted tokens from the massive layer on,
  // none before; their largest values sit in the planted channels and are >= 1000.
  for (int64_t l = 0; l < L; ++l) {
    const std::vector<float> h = f.read_f32(layer(l, "hidden_in"));
    INFO("layer " << l);
    CHECK(massive_tokens(h, T, D) == (l >= massive_layer ? massive : std::vector<int64_t>{}));
    if (l < massive_layer) continue;
    for (int64_t t : massive) {
      const auto row = h.begin() + t * D;
      const int64_t arg =
          std::max_element(row, row + D,
                           [](float a, float b) { return std::fabs(a) < std::fabs(b); }) -
          row;
      CHECK(std::find(channels.begin(), channels.end(), arg) != channels.end());
      CHECK(std::fabs(row[arg]) >= 1000.0f);
    }
  }

  // Attention sinks (docs/spec.md §4 ground truth, tau_mass = 5): the planted sinks and only them,
  // with a wide margin either side.
  const std::vector<double> score = sink_scores(f);
  double min_sink = INFINITY, max_other = 0.0;
  std::vector<int64_t> found;
  for (int64_t j = 0; j < static_cast<int64_t>(score.size()); ++j) {
    if (score[static_cast<size_t>(j)] >= 5.0) found.push_back(j);
    const bool planted = std::find(sinks.begin(), sinks.end(), j) != sinks.end();
    if (planted)
      min_sink = std::min(min_sink, score[static_cast<size_t>(j)]);
    else
      max_other = std::max(max_other, score[static_cast<size_t>(j)]);
  }
  INFO("smallest sink score " << min_sink << ", largest other score " << max_other);
  CHECK(found == sinks);
  CHECK(min_sink >= 10.0);
  CHECK(max_other <= 2.5);

  // Outlier channels of pre-RoPE K: mean |k| per channel >= 10x the median channel's, exactly the
  // listed ones, in every layer.
  const auto outliers =
      json::parse(f.metadata().at("outlier_channels")).get<std::vector<int64_t>>();
  CHECK(!outliers.empty());
  for (int64_t l = 0; l < L; ++l) {
    const std::vector<float> k = f.read_f32(layer(l, "k_pre_rope"));
    std::vector<double> mean(static_cast<size_t>(Hkv * d), 0.0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < Hkv * d; ++c)
        mean[static_cast<size_t>(c)] += std::fabs(static_cast<double>(k[t * Hkv * d + c])) / T;
    std::vector<double> sorted = mean;
    std::sort(sorted.begin(), sorted.end());
    const double median = sorted[sorted.size() / 2];
    std::vector<int64_t> big;
    for (int64_t c = 0; c < Hkv * d; ++c)
      if (mean[static_cast<size_t>(c)] >= 10.0 * median) big.push_back(c);
    INFO("layer " << l);
    CHECK(big == outliers);
  }

  // k is k_pre_rope rotated by RoPE (theta 10000, pairs (2i, 2i+1)) at the token's position:
  // an fp64 rotation agrees to fp32 rounding.
  for (int64_t l = 0; l < L; ++l) {
    const std::vector<float> pre = f.read_f32(layer(l, "k_pre_rope")),
                             k = f.read_f32(layer(l, "k"));
    double worst = 0.0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < Hkv; ++h)
        for (int64_t i = 0; i < d / 2; ++i) {
          const double angle = static_cast<double>(t) * std::pow(10000.0, -2.0 * i / d);
          const size_t at = static_cast<size_t>((t * Hkv + h) * d + 2 * i);
          const double a = pre[at], b = pre[at + 1];
          const double scale = std::max(1.0, std::hypot(a, b));
          worst =
              std::max(worst, std::fabs(a * std::cos(angle) - b * std::sin(angle) - k[at]) / scale);
          worst = std::max(
              worst, std::fabs(a * std::sin(angle) + b * std::cos(angle) - k[at + 1]) / scale);
        }
    CHECK(worst < 1e-5);
  }

  // Super Experts (docs/spec.md §5): exactly the planted ones, under either reading of round(0.75
  // L).
  if (E > 0) {
    std::set<std::pair<int64_t, int64_t>> planted;
    for (const auto& pair : json::parse(f.metadata().at("super_experts")))
      planted.emplace(pair.at(0).get<int64_t>(), pair.at(1).get<int64_t>());
    CHECK(!planted.empty());
    const double x = 0.75 * static_cast<double>(L);
    for (const int64_t considered :
         {static_cast<int64_t>(std::nearbyint(x)), static_cast<int64_t>(std::floor(x + 0.5))}) {
      INFO("considered layers " << considered);
      CHECK(super_experts(f, considered) == planted);
    }
  } else {
    CHECK_FALSE(f.has("layers.0.experts.ids"));
  }

  // Modality: one block of image tokens starting at token 8.
  const kvq::TensorView modality = f.view("modality");
  REQUIRE(modality.dtype == kvq::DType::U8);
  const auto* tags = static_cast<const uint8_t*>(modality.data);
  const int64_t images = meta_int(f, "image_tokens");
  for (int64_t t = 0; t < T; ++t) CHECK(tags[t] == ((t >= 8 && t < 8 + images) ? 1 : 0));
  CHECK(static_cast<int64_t>(json::parse(f.metadata().at("token_ids")).size()) == T);
}

}  // namespace

TEST_CASE("synth: the same seed gives identical bytes, another seed different ones") {
  kvq::SynthParams p;
  p.seed = 42;
  const std::vector<char> a = file_bytes(written(p, "a.safetensors"));
  const std::vector<char> b = file_bytes(written(p, "b.safetensors"));
  CHECK(a.size() > 1000000);
  CHECK((a == b));  // parenthesized: no dump of megabytes on failure
  p.seed = 43;
  const std::vector<char> c = file_bytes(written(p, "c.safetensors"));
  CHECK((a != c));
}

TEST_CASE("synth: the recording has the docs/design.md schema") {
  kvq::SynthParams p;
  const auto f = kvq::SafetensorsFile::open(written(p, "schema.safetensors"));
  for (int64_t l = 0; l < p.layers; ++l) {
    CHECK(f.view(layer(l, "k_pre_rope")).shape == kvq::Shape{p.tokens, p.kv_heads, p.head_dim});
    CHECK(f.view(layer(l, "k")).shape == kvq::Shape{p.tokens, p.kv_heads, p.head_dim});
    CHECK(f.view(layer(l, "v")).shape == kvq::Shape{p.tokens, p.kv_heads, p.head_dim});
    CHECK(f.view(layer(l, "q")).shape == kvq::Shape{p.tokens, p.heads, p.head_dim});
    CHECK(f.view(layer(l, "hidden_in")).shape == kvq::Shape{p.tokens, p.hidden});
    CHECK(f.view(layer(l, "experts.ids")).dtype == kvq::DType::I32);
    CHECK(f.view(layer(l, "experts.ids")).shape == kvq::Shape{p.tokens, p.top_k});
    CHECK(f.view(layer(l, "experts.down_absmax")).dtype == kvq::DType::F32);
    CHECK(f.view(layer(l, "experts.down_argmax")).shape == kvq::Shape{p.tokens, p.top_k});
    // Routed experts of a token are distinct and in range.
    const std::vector<int32_t> ids = f.read_i32(layer(l, "experts.ids"));
    for (int64_t t = 0; t < p.tokens; ++t) {
      std::set<int32_t> row(ids.begin() + t * p.top_k, ids.begin() + (t + 1) * p.top_k);
      CHECK(static_cast<int64_t>(row.size()) == p.top_k);
      CHECK(*row.begin() >= 0);
      CHECK(*row.rbegin() < p.experts);
    }
  }
  CHECK(f.view("modality").shape == kvq::Shape{p.tokens});
  CHECK(f.metadata().at("rope_theta") == "10000.0");
  CHECK(meta_int(f, "num_hidden_layers") == p.layers);
}

TEST_CASE("synth: planted ground truth holds (default shapes, several seeds)") {
  for (uint64_t seed : {1u, 2u, 3u}) {
    kvq::SynthParams p;
    p.seed = seed;
    INFO("seed " << seed);
    const std::string path = written(p, "truth.safetensors");
    CHECK(kvq::SafetensorsFile::open(path).metadata().at("seed") == std::to_string(seed));
    check_ground_truth(path);
  }
}

TEST_CASE("synth: planted ground truth holds for other shapes") {
  kvq::SynthParams small;
  small.layers = 3;
  small.tokens = 96;
  small.heads = 4;
  small.kv_heads = 2;
  small.head_dim = 16;
  small.hidden = 64;
  small.experts = 8;  // 16 considered values: the strict P99.5 rule can select one
  small.top_k = 2;
  small.image_tokens = 0;
  check_ground_truth(written(small, "small.safetensors"));
  CHECK(kvq::synthesize(small).truth.super_experts.size() == 1);

  kvq::SynthParams wide;
  wide.layers = 6;  // round(4.5): 4 half-to-even, 5 half-up
  wide.tokens = 320;
  wide.head_dim = 64;
  wide.experts = 160;  // 640 considered values: three Super Experts
  wide.top_k = 8;
  check_ground_truth(written(wide, "wide.safetensors"));
  CHECK(kvq::synthesize(wide).truth.super_experts.size() == 3);

  kvq::SynthParams dense;
  dense.experts = 0;
  dense.seed = 9;
  check_ground_truth(written(dense, "dense.safetensors"));
}

TEST_CASE("synth: selectable Super Experts follow the strict P99.5 rule") {
  CHECK(kvq::selectable_super_experts(24) == 1);
  CHECK(kvq::selectable_super_experts(384) == 2);
  CHECK(kvq::selectable_super_experts(1) == 0);  // one value never exceeds itself
  CHECK(kvq::selectable_super_experts(640) == 4);
}

TEST_CASE("synth: out-of-range parameters are errors naming the flag") {
  kvq::SynthParams p;
  p.layers = 2;
  REQUIRE_THROWS_WITH(kvq::synthesize(p), Contains("--layers"));
  p = {};
  p.heads = 6;
  REQUIRE_THROWS_WITH(kvq::synthesize(p), Contains("--heads"));
  p = {};
  p.head_dim = 7;
  REQUIRE_THROWS_WITH(kvq::synthesize(p), Contains("--head-dim"));
  p = {};
  p.top_k = 0;
  REQUIRE_THROWS_WITH(kvq::synthesize(p), Contains("--top-k"));
  p = {};
  p.image_tokens = p.tokens;
  REQUIRE_THROWS_WITH(kvq::synthesize(p), Contains("--image-tokens"));
  p = {};
  p.tokens = 40;
  REQUIRE_THROWS_WITH(kvq::synthesize(p), Contains("--tokens"));
}

TEST_CASE("synth: text_attention gives text keys that many nats more logit in layers < L/2 only") {
  kvq::SynthParams p;
  p.text_attention = 3.0;
  const kvq::SynthRecording marked = kvq::synthesize(p);
  const kvq::SynthRecording plain = kvq::synthesize(kvq::SynthParams{});
  const int64_t T = p.tokens, H = p.heads, Hkv = p.kv_heads, d = p.head_dim;
  const auto tensor = [](const kvq::SynthRecording& r, const std::string& name) {
    for (const auto& [n, t] : r.tensors)
      if (n == name) return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
    throw std::runtime_error("no tensor " + name);
  };
  const auto is_image = [&](int64_t t) { return t >= 8 && t < 8 + p.image_tokens; };
  for (int64_t l = 0; l < p.layers; ++l) {
    INFO("layer " << l);
    // Same random stream: values and residual stream are untouched, keys only on the marker pair.
    CHECK((tensor(marked, layer(l, "v")) == tensor(plain, layer(l, "v"))));
    CHECK((tensor(marked, layer(l, "hidden_in")) == tensor(plain, layer(l, "hidden_in"))));
    const std::vector<float> kp = tensor(marked, layer(l, "k_pre_rope"));
    const std::vector<float> kp0 = tensor(plain, layer(l, "k_pre_rope"));
    int64_t changed_off_pair = 0;
    for (size_t i = 0; i < kp.size(); ++i)
      if (kp[i] != kp0[i] && static_cast<int64_t>(i) % d / 2 != d / 2 - 2) ++changed_off_pair;
    CHECK(changed_off_pair == 0);

    // Mean post-RoPE logit q . k / sqrt(d) of text keys minus image keys (fp64, sinks excluded).
    const std::vector<float> q = tensor(marked, layer(l, "q"));
    const std::vector<float> k = tensor(marked, layer(l, "k"));
    double text_sum = 0.0, image_sum = 0.0;
    int64_t text_n = 0, image_n = 0;
    for (int64_t i = 0; i < T; ++i)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t j = 0; j <= i; ++j) {
          if (j == 0 || j == 5) continue;
          double dot = 0.0;
          for (int64_t c = 0; c < d; ++c)
            dot += static_cast<double>(q[static_cast<size_t>((i * H + h) * d + c)]) *
                   k[static_cast<size_t>((j * Hkv + h / (H / Hkv)) * d + c)];
          dot /= std::sqrt(static_cast<double>(d));
          (is_image(j) ? image_sum : text_sum) += dot;
          ++(is_image(j) ? image_n : text_n);
        }
    const double gap = text_sum / static_cast<double>(text_n) - image_sum / static_cast<double>(image_n);
    CHECK(std::fabs(gap - (2 * l < p.layers ? p.text_attention : 0.0)) < 0.2);
  }
  CHECK(marked.metadata.at("text_attention") == "3.0");
  CHECK(plain.metadata.count("text_attention") == 0);
  check_ground_truth(written(p, "text_attention.safetensors"));
}

TEST_CASE("synth: text_attention out of range or with a small head_dim names the flag") {
  kvq::SynthParams p;
  p.text_attention = -1.0;
  REQUIRE_THROWS_WITH(kvq::synthesize(p), Contains("--text-attention"));
  p.text_attention = 2.0;
  p.head_dim = 8;
  REQUIRE_THROWS_WITH(kvq::synthesize(p), Contains("--text-attention"));
}
