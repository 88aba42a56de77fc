// llama2.c runner: greedy generation reproduces llama2.c's stories260K output, logits match an
// independent fp64 forward written here with plain loops, token-by-token decode matches the
// whole-sequence forward, and bad checkpoints give kvq::Error.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "harness/model/llama2.h"
#include "harness/model/tokenizer.h"
#include "reference/attention.h"
#include "reference/error.h"
#include "tests/data_file.h"

namespace {

std::string model_path() {
  return kvq::testing::data_file("stories260K.bin").string();
}
std::string tok512() {
  return kvq::testing::data_file("tok512.bin").string();
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The checkpoint read again, independently of Model::load, into fp64 arrays.
struct Reference {
  int dim, hidden, layers, heads, kv_heads, vocab, seq_len;
  std::vector<double> emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, cls;
};

Reference read_reference(const std::string& path) {
  const std::string b = read_bytes(path);
  int32_t h[7];
  std::memcpy(h, b.data(), sizeof h);
  Reference r{h[0], h[1], h[2], h[3], h[4], std::abs(h[5]), h[6], {}, {}, {}, {}, {}, {}, {},
              {},   {},   {},   {},   {}};
  size_t o = 28;
  const auto take = [&](std::vector<double>& dst, size_t n) {
    dst.resize(n);
    for (size_t i = 0; i < n; ++i, o += 4) {
      float f;
      std::memcpy(&f, b.data() + o, 4);
      dst[i] = f;
    }
  };
  const size_t L = r.layers, D = r.dim, H = r.hidden, KV = D * r.kv_heads / r.heads;
  take(r.emb, r.vocab * D);
  take(r.rms_att, L * D);
  take(r.wq, L * D * D);
  take(r.wk, L * KV * D);
  take(r.wv, L * KV * D);
  take(r.wo, L * D * D);
  take(r.rms_ffn, L * D);
  take(r.w1, L * H * D);
  take(r.w2, L * D * H);
  take(r.w3, L * H * D);
  take(r.rms_final, D);
  o += 4 * static_cast<size_t>(r.seq_len) * (D / r.heads);  // two RoPE tables of seq_len * d/2
  if (h[5] < 0)
    take(r.cls, r.vocab * D);
  else
    r.cls = r.emb;
  REQUIRE(o == b.size());
  return r;
}

// y[n] = W[n, m] x[m] in double.
std::vector<double> mul(const double* w, size_t n, size_t m, const std::vector<double>& x) {
  std::vector<double> y(n, 0.0);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < m; ++j) y[i] += w[i * m + j] * x[j];
  return y;
}

std::vector<double> rmsnorm(const std::vector<double>& x, const double* w) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / x.size() + 1e-5);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = w[i] * x[i] * inv;
  return y;
}

void rope(std::vector<double>& x, size_t head_dim, size_t pos) {
  for (size_t h = 0; h < x.size() / head_dim; ++h)
    for (size_t i = 0; i < head_dim / 2; ++i) {
      const double a = pos * std::pow(10000.0, -2.0 * i / head_dim);
      const double x0 = x[h * head_dim + 2 * i], x1 = x[h * head_dim + 2 * i + 1];
      x[h * head_dim + 2 * i] = x0 * std::cos(a) - x1 * std::sin(a);
      x[h * head_dim + 2 * i + 1] = x0 * std::sin(a) + x1 * std::cos(a);
    }
}

// Logits [T][vocab] of the whole sequence in fp64.
std::vector<std::vector<double>> reference_logits(const Reference& r,
                                                  const std::vector<int32_t>& tokens) {
  const size_t D = r.dim, H = r.hidden, d = D / r.heads, KV = d * r.kv_heads, T = tokens.size();
  std::vector<std::vector<double>> x(T), keys(T), values(T), out(T);
  for (size_t t = 0; t < T; ++t) x[t].assign(&r.emb[tokens[t] * D], &r.emb[tokens[t] * D] + D);
  for (size_t l = 0; l < static_cast<size_t>(r.layers); ++l) {
    std::vector<std::vector<double>> q(T);
    for (size_t t = 0; t < T; ++t) {
      const auto xn = rmsnorm(x[t], &r.rms_att[l * D]);
      q[t] = mul(&r.wq[l * D * D], D, D, xn);
      keys[t] = mul(&r.wk[l * KV * D], KV, D, xn);
      values[t] = mul(&r.wv[l * KV * D], KV, D, xn);
      rope(q[t], d, t);
      rope(keys[t], d, t);
    }
    for (size_t t = 0; t < T; ++t) {
      std::vector<double> att_out(D, 0.0);
      for (size_t h = 0; h < static_cast<size_t>(r.heads); ++h) {
        const size_t kvh = h / (r.heads / r.kv_heads);
        std::vector<double> s(t + 1);
        double mx = -1e300, sum = 0;
        for (size_t j = 0; j <= t; ++j) {
          s[j] = 0;
          for (size_t i = 0; i < d; ++i) s[j] += q[t][h * d + i] * keys[j][kvh * d + i];
          s[j] /= std::sqrt(static_cast<double>(d));
          mx = std::max(mx, s[j]);
        }
        for (size_t j = 0; j <= t; ++j) sum += s[j] = std::exp(s[j] - mx);
        for (size_t j = 0; j <= t; ++j)
          for (size_t i = 0; i < d; ++i) att_out[h * d + i] += s[j] / sum * values[j][kvh * d + i];
      }
      const auto o = mul(&r.wo[l * D * D], D, D, att_out);
      for (size_t i = 0; i < D; ++i) x[t][i] += o[i];
      const auto xn = rmsnorm(x[t], &r.rms_ffn[l * D]);
      auto h1 = mul(&r.w1[l * H * D], H, D, xn);
      const auto h3 = mul(&r.w3[l * H * D], H, D, xn);
      for (size_t i = 0; i < H; ++i) h1[i] = h1[i] / (1.0 + std::exp(-h1[i])) * h3[i];
      const auto f = mul(&r.w2[l * D * H], D, H, h1);
      for (size_t i = 0; i < D; ++i) x[t][i] += f[i];
    }
  }
  for (size_t t = 0; t < T; ++t)
    out[t] = mul(r.cls.data(), r.vocab, D, rmsnorm(x[t], r.rms_final.data()));
  return out;
}

// max_i |a_i - b_i| / max_i |b_i|
template <class A, class B>
double relative_error(const A& a, const B& b) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return diff / scale;
}

std::vector<int32_t> first_tokens(const kvq::Tokenizer& tok, size_t n) {
  const std::string text = kvq::read_text_file(
      kvq::testing::data_file("tinystories-sample.txt").string());
  std::vector<int32_t> ids = tok.encode(text);
  ids.insert(ids.begin(), kvq::kBosId);
  ids.resize(n);
  return ids;
}

std::filesystem::path write_temp(const std::string& name, const std::string& bytes) {
  const auto path = std::filesystem::temp_directory_path() / ("kvq_test_model_" + name);
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

}  // namespace

TEST_CASE("model: stories260K config read from the header") {
  const kvq::Model m = kvq::Model::load(model_path());
  const kvq::ModelConfig& c = m.config();
  CHECK(c.dim == 64);
  CHECK(c.hidden_dim == 172);
  CHECK(c.n_layers == 5);
  CHECK(c.n_heads == 8);
  CHECK(c.n_kv_heads == 4);
  CHECK(c.vocab_size == 512);
  CHECK(c.seq_len == 512);
  CHECK(c.shared_classifier);
  CHECK(c.head_dim() == 8);
  CHECK(m.name() == "stories260K");
}

TEST_CASE("model: greedy decoding from BOS reproduces llama2.c's stories260K text") {
  const kvq::Model m = kvq::Model::load(model_path());
  const kvq::Tokenizer tok = kvq::Tokenizer::load(tok512());
  kvq::require_matching_tokenizer(m, tok);
  const std::vector<int32_t> ids = kvq::generate_greedy(m, 40);
  std::string text;
  int32_t prev = kvq::kBosId;
  for (int32_t id : ids) {
    text += tok.decode(prev, id);
    prev = id;
  }
  CHECK_THAT(text, Catch::StartsWith("Once upon a time, there was a little girl named Lily. She "
                                     "loved to play outside in the park."));
}

TEST_CASE("model: decode logits match an fp64 plain-loop forward within 1e-5 relative") {
  const kvq::Model m = kvq::Model::load(model_path());
  const kvq::Tokenizer tok = kvq::Tokenizer::load(tok512());
  const std::vector<int32_t> tokens = first_tokens(tok, 12);
  const auto expected = reference_logits(read_reference(model_path()), tokens);
  kvq::Fp32KvCache cache(m.config().n_layers);
  kvq::Decoder decoder(m, cache);
  for (size_t t = 0; t < tokens.size(); ++t) {
    const std::span<const float> logits = decoder.step(tokens[t]);
    INFO("position " << t);
    CHECK(relative_error(logits, expected[t]) <= 1e-5);
  }
}

TEST_CASE("model: random untied-classifier GQA and tied MHA checkpoints match the fp64 forward") {
  // Small random models exercise what stories260K does not: a separate classifier (negative
  // vocab in the header) and n_kv_heads == n_heads.
  struct Dims {
    int32_t dim, hidden, layers, heads, kv_heads, vocab, seq_len;
  };
  for (const Dims& d : {Dims{16, 24, 2, 4, 2, -300, 32}, Dims{32, 40, 3, 4, 4, 260, 16}}) {
    std::mt19937 rng(static_cast<uint32_t>(d.dim + d.kv_heads));
    std::normal_distribution<float> normal(0.0f, 0.3f);
    const int64_t D = d.dim, H = d.hidden, L = d.layers, KV = D * d.kv_heads / d.heads;
    const int64_t V = std::abs(d.vocab);
    int64_t floats = V * D + L * (D + D * D + 2 * KV * D + D * D + D + 3 * H * D) + D +
                     d.seq_len * (D / d.heads) + (d.vocab < 0 ? V * D : 0);
    std::string bytes(28 + 4 * static_cast<size_t>(floats), '\0');
    std::memcpy(bytes.data(), &d, 28);
    for (int64_t i = 0; i < floats; ++i) {
      const float w = 1.0f + normal(rng);  // near 1 keeps the RMSNorm weights sensible
      const float x = normal(rng);
      const int64_t rms_att = V * D, rms_ffn = V * D + L * (D + 2 * D * D + 2 * KV * D);
      const bool norm =
          (i >= rms_att && i < rms_att + L * D) || (i >= rms_ffn && i < rms_ffn + L * D);
      std::memcpy(bytes.data() + 28 + 4 * i, norm ? &w : &x, 4);
    }
    const auto path = write_temp("random", bytes);
    const kvq::Model m = kvq::Model::load(path.string());
    CHECK(m.config().shared_classifier == (d.vocab > 0));
    const std::vector<int32_t> tokens = {1, 7, 200, 3, 42, 255, 9, 100};
    const auto expected = reference_logits(read_reference(path.string()), tokens);
    std::filesystem::remove(path);
    kvq::Fp32KvCache cache(m.config().n_layers);
    kvq::Decoder decoder(m, cache);
    for (size_t t = 0; t < tokens.size(); ++t) {
      INFO("dim " << d.dim << " position " << t);
      CHECK(relative_error(decoder.step(tokens[t]), expected[t]) <= 1e-5);
    }
  }
}

TEST_CASE("model: token-by-token decode matches the whole-sequence forward within 1e-5") {
  const kvq::Model m = kvq::Model::load(model_path());
  const kvq::Tokenizer tok = kvq::Tokenizer::load(tok512());
  const std::vector<int32_t> tokens = first_tokens(tok, 200);
  const std::vector<float> whole = kvq::forward_sequence(m, tokens);
  const size_t vocab = static_cast<size_t>(m.config().vocab_size);
  REQUIRE(whole.size() == tokens.size() * vocab);
  kvq::Fp32KvCache cache(m.config().n_layers);
  kvq::Decoder decoder(m, cache);
  double worst = 0;
  for (size_t t = 0; t < tokens.size(); ++t) {
    const std::span<const float> logits = decoder.step(tokens[t]);
    worst =
        std::max(worst, relative_error(logits, std::span<const float>(&whole[t * vocab], vocab)));
  }
  CHECK(worst <= 1e-5);
  CHECK(decoder.position() == 200);
}

TEST_CASE("model: hooks see post-RoPE k equal to RoPE(k_pre_rope) and the cache sees the rows") {
  const kvq::Model m = kvq::Model::load(model_path());
  const kvq::ModelConfig& c = m.config();
  kvq::Fp32KvCache cache(c.n_layers);
  kvq::Decoder decoder(m, cache);
  int calls = 0;
  decoder.set_hook([&](const kvq::LayerActivations& a) {
    ++calls;
    REQUIRE(a.hidden_in.size() == 64);
    REQUIRE(a.q.size() == 64);
    REQUIRE(a.k.size() == 32);
    std::vector<float> k(a.k_pre_rope.begin(), a.k_pre_rope.end());
    kvq::apply_rope(k, c.n_kv_heads, c.head_dim(), a.position, c.rope_theta);
    CHECK(std::equal(k.begin(), k.end(), a.k.begin()));
    if (a.position == 0) {  // angle 0: RoPE is the identity at position 0
      CHECK(std::equal(a.k.begin(), a.k.end(), a.k_pre_rope.begin()));
    }
  });
  decoder.step(kvq::kBosId);
  decoder.step(353);
  CHECK(calls == 2 * c.n_layers);
  CHECK(cache.keys(0).size() == 2 * 32);
}

TEST_CASE("model: decode past seq_len and out-of-vocabulary ids are errors") {
  const kvq::Model m = kvq::Model::load(model_path());
  kvq::Fp32KvCache cache(m.config().n_layers);
  kvq::Decoder decoder(m, cache);
  CHECK_THROWS_AS(decoder.step(512), kvq::Error);
  CHECK_THROWS_AS(decoder.step(-1), kvq::Error);
  const std::vector<int32_t> too_long(513, 1);
  CHECK_THROWS_AS(kvq::forward_sequence(m, too_long), kvq::Error);
}

TEST_CASE("model: truncated, corrupted or mismatched checkpoints give kvq::Error") {
  const std::string good = read_bytes(model_path());
  SECTION("truncated by one float: the error names expected and actual bytes") {
    const auto p = write_temp("short", good.substr(0, good.size() - 4));
    CHECK_THROWS_WITH(kvq::Model::load(p.string()),
                      Catch::Contains("1056536 bytes") && Catch::Contains("1056540 bytes"));
    std::filesystem::remove(p);
  }
  SECTION("shorter than the header") {
    const auto p = write_temp("header", good.substr(0, 20));
    CHECK_THROWS_AS(kvq::Model::load(p.string()), kvq::Error);
    std::filesystem::remove(p);
  }
  SECTION("zero or negative dimensions") {
    for (int field : {0, 2, 6}) {
      for (int32_t value : {0, -3}) {
        std::string bad = good;
        std::memcpy(bad.data() + 4 * field, &value, 4);
        const auto p = write_temp("dims", bad);
        CHECK_THROWS_AS(kvq::Model::load(p.string()), kvq::Error);
        std::filesystem::remove(p);
      }
    }
  }
  SECTION("n_heads not a multiple of n_kv_heads") {
    std::string bad = good;
    const int32_t kv = 3;
    std::memcpy(bad.data() + 16, &kv, 4);
    const auto p = write_temp("kv", bad);
    CHECK_THROWS_WITH(kvq::Model::load(p.string()), Catch::Contains("n_kv_heads"));
    std::filesystem::remove(p);
  }
  SECTION("negative vocab (untied classifier) without the classifier bytes") {
    std::string bad = good;
    const int32_t vocab = -512;
    std::memcpy(bad.data() + 20, &vocab, 4);
    const auto p = write_temp("untied", bad);
    CHECK_THROWS_WITH(kvq::Model::load(p.string()), Catch::Contains("implies"));
    std::filesystem::remove(p);
  }
  SECTION("a NaN weight is named") {
    std::string bad = good;
    const float nan = std::nanf("");
    std::memcpy(bad.data() + 28 + 4 * 5, &nan, 4);
    const auto p = write_temp("nan", bad);
    CHECK_THROWS_WITH(kvq::Model::load(p.string()),
                      Catch::Contains("token_embedding") && Catch::Contains("index 5"));
    std::filesystem::remove(p);
  }
  SECTION("a tokenizer of another vocabulary") {
    const kvq::Model m = kvq::Model::load(model_path());
    const kvq::Tokenizer llama =
        kvq::Tokenizer::load(kvq::testing::data_file("tokenizer.bin").string());
    CHECK_THROWS_WITH(kvq::require_matching_tokenizer(m, llama),
                      Catch::Contains("32000") && Catch::Contains("512"));
  }
  CHECK_THROWS_AS(kvq::Model::load(model_path() + ".missing"), kvq::Error);
}
