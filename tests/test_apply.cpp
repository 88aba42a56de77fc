// `kvq apply` (harness/recording/apply.h): a small recording written with write_safetensors,
// applied, read back; names, shapes, and dequant == dequantize(codes) checked from the file alone.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "harness/io/safetensors.h"
#include "harness/recording/apply.h"
#include "reference/attention.h"
#include "reference/error.h"
#include "reference/half.h"
#include "data_file.h"

namespace kvq {
int cmd_apply(int argc, char** argv);
}

using namespace kvq;

namespace {

constexpr int64_t L = 2, T = 20, H = 4, D = 8, HQ = 8, HIDDEN = 16;

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() /
           ("kvq_test_apply_" + std::to_string(reinterpret_cast<uintptr_t>(this)));
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

// Writes a recording with every tensor of docs/design.md's schema except `skip`.
void write_recording(const std::string& path, const std::string& skip = "") {
  std::vector<Tensor> store;
  store.reserve(64);
  std::vector<NamedTensor> named;
  auto add = [&](const std::string& name, Shape shape, float scale, float phase) {
    std::vector<float> x(static_cast<size_t>(shape_numel(shape)));
    for (size_t i = 0; i < x.size(); ++i)
      x[i] = scale * std::sin(0.61f * static_cast<float>(i) + phase);
    if (name == skip) return;
    store.push_back(Tensor::from_f32(x, shape));
    named.push_back({name, store.back().view()});
  };
  for (int64_t l = 0; l < L; ++l) {
    const std::string b = "layers." + std::to_string(l) + ".";
    add(b + "k_pre_rope", {T, H, D}, 1.0f, 0.1f * l);
    add(b + "k", {T, H, D}, 1.0f, 0.2f + 0.1f * l);
    add(b + "v", {T, H, D}, 0.5f, 0.3f + 0.1f * l);
    add(b + "q", {T, HQ, D}, 1.0f, 0.4f);
    add(b + "hidden_in", {T, HIDDEN}, 2.0f, 0.5f);
  }
  write_safetensors(path, named, {{"model", "synthetic test"}});
}

Quantized from_file(const SafetensorsFile& f, const std::string& base, int64_t rows,
                    const QuantParams& p) {
  Quantized q;
  q.rows = rows;
  q.cols = H * D;
  q.params = p;
  const TensorView codes = f.view(base + "codes"), scale = f.view(base + "scale"),
                   zero = f.view(base + "zero");
  q.codes.resize(static_cast<size_t>(codes.numel()));
  std::memcpy(q.codes.data(), codes.data, q.codes.size());
  q.scale.resize(static_cast<size_t>(scale.numel()));
  std::memcpy(q.scale.data(), scale.data, q.scale.size() * 2);
  q.zero.resize(static_cast<size_t>(zero.numel()));
  std::memcpy(q.zero.data(), zero.data, q.zero.size() * 2);
  return q;
}

}  // namespace

TEST_CASE("apply: rtn output has every tensor, and dequant equals dequantize(codes)") {
  TempDir dir;
  write_recording(dir.file("rec.safetensors"));
  MethodParams p;
  p.method = Method::Rtn;
  p.bits = 3;
  p.group = 16;
  const SafetensorsFile rec = SafetensorsFile::open(dir.file("rec.safetensors"));
  write_applied(dir.file("out.safetensors"), apply_recording(rec, p), "rec.safetensors");
  const SafetensorsFile out = SafetensorsFile::open(dir.file("out.safetensors"));
  CHECK(out.metadata().at("method") == "rtn");
  CHECK(out.metadata().at("bits") == "3");
  CHECK(out.metadata().at("group") == "16");
  CHECK(out.metadata().at("axis") == "k=token,v=token");
  CHECK(out.metadata().at("backend") == "ref");
  CHECK(out.metadata().at("permutation") == "none");
  // 3 bits x 16 channels = 6 bytes per group + 32 bits of scale/zero: (48 + 32) / 16 = 5.
  CHECK(out.metadata().at("bits_per_element_k") == "5");
  for (int64_t l = 0; l < L; ++l)
    for (const std::string x : {"k", "v"}) {
      const std::string base = "layers." + std::to_string(l) + "." + x + ".";
      const TensorView dq = out.view(base + "dequant");
      CHECK(dq.dtype == DType::F32);
      CHECK(dq.shape == Shape{T, H, D});
      CHECK(out.view(base + "codes").dtype == DType::U8);
      CHECK(out.view(base + "codes").shape == Shape{T * 2 * 6});  // 2 groups of 6 bytes
      CHECK(out.view(base + "scale").dtype == DType::F16);
      CHECK(out.view(base + "scale").shape == Shape{T * 2});
      CHECK(out.view(base + "zero").shape == Shape{T * 2});
      CHECK(out.view(base + "kept").dtype == DType::I32);
      CHECK(out.view(base + "kept").shape == Shape{0});
      CHECK(out.read_i32(base + "rows").size() == static_cast<size_t>(T));
      QuantParams qp;
      qp.bits = 3;
      qp.group = 16;
      const std::vector<float> expect = dequantize(from_file(out, base, T, qp));
      CHECK(out.read_f32(base + "dequant") == expect);
    }
}

TEST_CASE("apply: kivi and rotatekv write kept tokens, permutations and reconstructions") {
  TempDir dir;
  write_recording(dir.file("rec.safetensors"));
  const SafetensorsFile rec = SafetensorsFile::open(dir.file("rec.safetensors"));
  MethodParams kivi;
  kivi.method = Method::Kivi;
  kivi.group = 8;
  kivi.window = 8;  // 12 tokens before the window: one whole group of 8, 4 pending fp16
  write_applied(dir.file("kivi.safetensors"), apply_recording(rec, kivi), "rec");
  const SafetensorsFile k = SafetensorsFile::open(dir.file("kivi.safetensors"));
  CHECK(k.metadata().at("axis") == "k=channel,v=token");
  CHECK(k.read_i32("layers.0.k.kept").size() == 12);
  CHECK(k.read_i32("layers.0.v.kept").size() == 8);
  CHECK(k.view("layers.0.k.kept_values").shape == Shape{12, H, D});
  // Kept K rows are fp16 of the recorded post-RoPE k, bit for bit.
  const std::vector<float> rk = rec.read_f32("layers.1.k");
  const std::vector<float> dk = k.read_f32("layers.1.k.dequant");
  for (int64_t i = 8 * H * D; i < T * H * D; ++i)
    CHECK(dk[static_cast<size_t>(i)] == round_to_half(rk[static_cast<size_t>(i)]));
  MethodParams rot;
  rot.method = Method::RotateKv;
  rot.group = 32;
  write_applied(dir.file("rot.safetensors"), apply_recording(rec, rot), "rec");
  const SafetensorsFile r = SafetensorsFile::open(dir.file("rot.safetensors"));
  CHECK(r.view("layers.1.k.perm").shape == Shape{H * D});
  CHECK(r.metadata().at("permutation").find("tokens 0..9") != std::string::npos);
  CHECK(r.metadata().at("k_pre_rope") == "true");
  CHECK(r.metadata().at("clip") == "k=0.8,v=0.8");  // docs/spec.md §8: 2 bits clip K and V alike
}

TEST_CASE("apply: missing tensors, bad methods and other backends are errors") {
  TempDir dir;
  write_recording(dir.file("rec.safetensors"), "layers.1.k_pre_rope");
  const SafetensorsFile rec = SafetensorsFile::open(dir.file("rec.safetensors"));
  MethodParams p;
  p.method = Method::KvQuant;
  CHECK_THROWS_WITH(apply_recording(rec, p),
                    Catch::Contains("rec.safetensors") && Catch::Contains("layers.1.k_pre_rope"));
  p.method = Method::Rtn;
  CHECK_NOTHROW(apply_recording(rec, p));  // rtn reads post-RoPE k only
  CHECK_THROWS_WITH(apply_recording(rec, p, "avx2"), Catch::Contains("avx2"));
  const std::string in = dir.file("rec.safetensors"), out = dir.file("o.safetensors");
  std::vector<std::string> args{"apply", "--method", "nope",  "--bits", "2",
                                "--in",  in,         "--out", out};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  // Bad input throws kvq::Error, which the CLI prints as one "kvq: ..." line with exit 2.
  CHECK_THROWS_WITH(cmd_apply(static_cast<int>(argv.size()), argv.data()),
                    Catch::Contains("unknown method 'nope'"));
  args[2] = "rtn";
  argv.clear();
  for (std::string& a : args) argv.push_back(a.data());
  CHECK(cmd_apply(static_cast<int>(argv.size()), argv.data()) == 0);
  CHECK(std::filesystem::is_regular_file(out));
}

TEST_CASE("apply: every method runs on the tiny-moe recording") {
  const auto path = kvq::testing::data_file("tiny-moe.safetensors");
  const SafetensorsFile rec = SafetensorsFile::open(path.string());
  for (const char* name : {"rtn", "kivi", "kvquant", "rotatekv", "kvsink+kvquant", "akvq-vl"}) {
    MethodParams p;
    p.method = parse_method(name);
    const AppliedRecording a = apply_recording(rec, p);
    REQUIRE(a.layers.size() == 8);
    INFO(name << ": K " << a.k_bits_per_element << " V " << a.v_bits_per_element);
    CHECK(a.k_bits_per_element > 2.0);
    CHECK(std::isfinite(a.k_bits_per_element));
    // At docs/spec.md's thresholds (tau_abs = 100) this small model has no massive activations
    // (its largest |h| is about 4): KVSink keeps nothing and K is plain 2-bit kvquant.
    if (p.method == Method::KvSinkKvQuant) CHECK(a.calibration.kvsink.layer == -1);
    WARN(name << ": K " << a.k_bits_per_element << " bits/el, V " << a.v_bits_per_element);
  }
}

TEST_CASE("apply: KVSink with lowered thresholds calibrates on the tiny-moe recording") {
  const auto path = kvq::testing::data_file("tiny-moe.safetensors");
  const SafetensorsFile rec = SafetensorsFile::open(path.string());
  MethodParams p;
  p.method = Method::KvSinkKvQuant;
  p.kvsink.massive.tau_abs = 2.0f;  // tokens 0 and 1 (BOS) reach |h| = 2.6 on channel 175 from
  p.kvsink.massive.tau_rel = 4.0f;  // layer 1 on, about 7x the median token
  const AppliedRecording a = apply_recording(rec, p);
  CHECK(a.calibration.kvsink.layer == 1);
  REQUIRE_FALSE(a.calibration.kvsink.channels.empty());
  CHECK(a.calibration.kvsink.channels[0] == 175);
  CHECK(a.calibration.kvsink.channels.size() <= 8);
}
