// kvq record: a stories260K recording read back with SafetensorsFile has the docs/design.md names,
// shapes and metadata, its k equals RoPE(k_pre_rope) recomputed here from docs/spec.md §7's
// formula, and its layer-0 hidden_in rows are the checkpoint's embedding rows.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "harness/cli/commands.h"
#include "harness/io/safetensors.h"
#include "harness/model/llama2.h"
#include "harness/model/recorder.h"
#include "harness/model/tokenizer.h"
#include "reference/error.h"
#include "tests/data_file.h"

namespace {

std::string data(const char* name) {
  return kvq::testing::data_file(name).string();
}

// docs/spec.md §7 RoPE: angle = pos * theta^(-2i/d) in fp64, cos/sin rounded to fp32, then
// (a, b) -> (a*c - b*s, a*s + b*c) with each product rounded (no FMA).
std::vector<float> rope_here(const float* x, int heads, int d, int64_t pos) {
  std::vector<float> y(x, x + heads * d);
  for (int i = 0; i < d / 2; ++i) {
    const double angle = static_cast<double>(pos) * std::pow(10000.0, -2.0 * i / d);
    const float c = static_cast<float>(std::cos(angle)), s = static_cast<float>(std::sin(angle));
    for (int h = 0; h < heads; ++h) {
      const float a = x[h * d + 2 * i], b = x[h * d + 2 * i + 1];
      const float ac = a * c, bs = b * s, as = a * s, bc = b * c;
      y[h * d + 2 * i] = ac - bs;
      y[h * d + 2 * i + 1] = as + bc;
    }
  }
  return y;
}

struct TempFile {
  std::filesystem::path path;
  explicit TempFile(const std::string& name)
      : path(std::filesystem::temp_directory_path() / ("kvq_test_record_" + name)) {}
  ~TempFile() { std::filesystem::remove(path); }
};

}  // namespace

TEST_CASE("record: kvq record writes the recording schema, read back with SafetensorsFile") {
  const std::string model = data("stories260K.bin");
  const std::string tok = data("tok512.bin");
  const std::string text = data("tinystories-sample.txt");
  TempFile out("rec.safetensors");
  std::vector<std::string> args = {"record",         "--model", model,      "--tokenizer", tok,
                                   "--text",         text,      "--tokens", "40",          "--out",
                                   out.path.string()};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  REQUIRE(kvq::cmd_record(static_cast<int>(argv.size()), argv.data()) == 0);

  const kvq::SafetensorsFile f = kvq::SafetensorsFile::open(out.path.string());
  CHECK(f.names().size() == 5 * 5);
  const int64_t T = 40;
  for (int l = 0; l < 5; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    CHECK(f.view(p + "k_pre_rope").shape == kvq::Shape{T, 4, 8});
    CHECK(f.view(p + "k").shape == kvq::Shape{T, 4, 8});
    CHECK(f.view(p + "v").shape == kvq::Shape{T, 4, 8});
    CHECK(f.view(p + "q").shape == kvq::Shape{T, 8, 8});
    CHECK(f.view(p + "hidden_in").shape == kvq::Shape{T, 64});
    CHECK(f.view(p + "k").dtype == kvq::DType::F32);
  }

  const auto& meta = f.metadata();
  CHECK(meta.at("model") == "stories260K");
  CHECK(meta.at("n_layers") == "5");
  CHECK(meta.at("n_heads") == "8");
  CHECK(meta.at("n_kv_heads") == "4");
  CHECK(meta.at("head_dim") == "8");
  CHECK(meta.at("rope_theta") == "10000");
  const auto ids = nlohmann::json::parse(meta.at("tokens")).get<std::vector<int32_t>>();
  REQUIRE(ids.size() == 40);
  // BOS, then the first ids of the text (data/SOURCES.md).
  CHECK(std::vector<int32_t>(ids.begin(), ids.begin() + 5) ==
        std::vector<int32_t>{1, 353, 331, 407, 261});
  CHECK_THAT(meta.at("text"), Catch::StartsWith("once upon a time there was"));

  // k = RoPE(k_pre_rope) at each token's position, bit for bit.
  for (int l = 0; l < 5; ++l) {
    const auto pre = f.read_f32("layers." + std::to_string(l) + ".k_pre_rope");
    const auto k = f.read_f32("layers." + std::to_string(l) + ".k");
    for (int64_t t = 0; t < T; ++t) {
      const auto expected = rope_here(&pre[static_cast<size_t>(t * 32)], 4, 8, t);
      INFO("layer " << l << " token " << t);
      CHECK(std::memcmp(expected.data(), &k[static_cast<size_t>(t * 32)], 32 * 4) == 0);
    }
  }

  // Layer 0's residual input is the token's embedding row (offset 28 bytes, [vocab, 64]).
  std::ifstream in(model, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto hidden = f.read_f32("layers.0.hidden_in");
  for (int64_t t = 0; t < T; ++t)
    CHECK(std::memcmp(bytes.data() + 28 + 4 * 64 * ids[t], &hidden[t * 64], 64 * 4) == 0);
}

TEST_CASE("record: recording twice gives the same tensors, each token its own row") {
  // No state leaks between runs, and the k rows of tokens 2 and 3 in layer 2 differ (positions
  // are not mixed up).
  const kvq::Model m = kvq::Model::load(data("stories260K.bin"));
  const std::vector<int32_t> ids = {1, 353, 331, 407, 261};
  const kvq::Recording a = kvq::record_activations(m, ids);
  const kvq::Recording b = kvq::record_activations(m, ids);
  CHECK(a.layers[2].k == b.layers[2].k);
  CHECK(a.layers[4].hidden_in == b.layers[4].hidden_in);
  CHECK(!std::equal(a.layers[2].k.begin() + 64, a.layers[2].k.begin() + 96,
                    a.layers[2].k.begin() + 96));
}

TEST_CASE("record: more tokens than seq_len or than the text holds is an error") {
  const kvq::Model m = kvq::Model::load(data("stories260K.bin"));
  const std::vector<int32_t> too_many(513, 1);
  CHECK_THROWS_AS(kvq::record_activations(m, too_many), kvq::Error);
  CHECK_THROWS_AS(kvq::record_activations(m, {}), kvq::Error);

  TempFile text("short.txt"), out("short.safetensors");
  std::ofstream(text.path) << "hi";
  std::vector<std::string> args = {"record",
                                   "--model",
                                   data("stories260K.bin"),
                                   "--tokenizer",
                                   data("tok512.bin"),
                                   "--text",
                                   text.path.string(),
                                   "--tokens",
                                   "10",
                                   "--out",
                                   out.path.string()};
  std::vector<char*> argv;
  for (auto& s : args) argv.push_back(s.data());
  CHECK_THROWS_WITH(kvq::cmd_record(static_cast<int>(argv.size()), argv.data()),
                    Catch::Contains("short.txt"));
  CHECK(!std::filesystem::exists(out.path));
}

TEST_CASE("record: --dtype f16 writes every tensor as fp16, rounded to nearest even") {
  // dim 4, 2 query heads of 2, 1 KV head: hidden_in [2, 4], q [2, 2, 2], k/v [2, 1, 2].
  kvq::Recording rec;
  rec.config.dim = 4;
  rec.config.hidden_dim = 8;
  rec.config.n_layers = 1;
  rec.config.n_heads = 2;
  rec.config.n_kv_heads = 1;
  rec.config.vocab_size = 8;
  rec.config.seq_len = 2;
  rec.model = "hand";
  rec.tokens = {1, 5};
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to the even 1. 1 + 3 * 2^-11 is halfway
  // between 1 + 2^-10 and 1 + 2^-9: ties to the even 1 + 2^-9. The others are exact in fp16.
  const float tie_down = 1.0f + 0x1p-11f, tie_up = 1.0f + 3 * 0x1p-11f;
  kvq::LayerRecording l;
  l.hidden_in = {0.5f, -3.25f, 1024.0f, tie_down, tie_up, 0.0f, -0.0f, 65504.0f};
  l.q = {1, 2, 3, 4, 5, 6, 7, 8};
  l.k_pre_rope = {tie_down, 2, 3, 4};
  l.k = {1, 2, 3, 4};
  l.v = {-1, -2, tie_up, -4};
  rec.layers = {l};
  TempFile out("f16.safetensors");
  kvq::write_recording(out.path.string(), rec, kvq::DType::F16);
  const kvq::SafetensorsFile f = kvq::SafetensorsFile::open(out.path.string());
  CHECK(f.view("layers.0.v").dtype == kvq::DType::F16);
  CHECK(f.view("layers.0.hidden_in").dtype == kvq::DType::F16);
  CHECK(f.read_f32("layers.0.hidden_in") ==
        std::vector<float>{0.5f, -3.25f, 1024.0f, 1.0f, 1.0f + 0x1p-9f, 0.0f, -0.0f, 65504.0f});
  CHECK(f.read_f32("layers.0.k_pre_rope") == std::vector<float>{1, 2, 3, 4});
  CHECK(f.read_f32("layers.0.v") == std::vector<float>{-1, -2, 1.0f + 0x1p-9f, -4});
  // Beyond fp16's range (65520 and up round to inf): an error naming the tensor and index.
  rec.layers[0].q[3] = 70000.0f;
  CHECK_THROWS_WITH(kvq::write_recording(out.path.string(), rec, kvq::DType::F16),
                    Catch::Contains("layers.0.q[3]") && Catch::Contains("fp16"));
}
