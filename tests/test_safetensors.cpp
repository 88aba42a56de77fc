#include <unistd.h>

#include <bit>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "harness/io/safetensors.h"
#include "reference/error.h"
#include "reference/half.h"
#include "tests/scratch.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using kvq::DType;

namespace {

fs::path temp_dir() {
  const fs::path dir =
      kvq::testing::scratch_root("safetensors");
  fs::create_directories(dir);
  return dir;
}

// A file made of the given bytes: u64 little-endian header length, header text, data.
std::string raw_file(const std::string& name, uint64_t header_len, const std::string& header,
                     const std::vector<uint8_t>& data) {
  const std::string path = (temp_dir() / name).string();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((header_len >> (8 * i)) & 0xFF));
  out << header;
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  return path;
}
std::string raw_file(const std::string& name, const std::string& header,
                     const std::vector<uint8_t>& data) {
  return raw_file(name, header.size(), header, data);
}

std::vector<uint8_t> bytes_of_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

template <class T>
kvq::TensorView view_of(const std::vector<T>& v, DType dtype, kvq::Shape shape) {
  return {v.data(), dtype, std::move(shape)};
}

template <class T>
std::vector<T> view_values(const kvq::TensorView& v) {
  std::vector<T> out(static_cast<size_t>(v.numel()));
  std::memcpy(out.data(), v.data, v.nbytes());
  return out;
}

}  // namespace

TEST_CASE("safetensors: writer round trip keeps every dtype, shape, byte and metadata") {
  const std::vector<float> f32 = {1.5f,  -0.0f,  std::numeric_limits<float>::denorm_min(),
                                  3e38f, -7.25f, 0.1f};
  const std::vector<uint8_t> u8 = {0, 7, 255};  // odd length: the next tensor is misaligned
  const std::vector<uint16_t> f16 = {kvq::float_to_half(1.0f), kvq::float_to_half(-65504.0f),
                                     0x0001, 0x8000};
  const std::vector<uint16_t> bf16 = {kvq::float_to_bf16(3.0f), kvq::float_to_bf16(-1e30f)};
  const std::vector<int32_t> i32 = {0, -1, std::numeric_limits<int32_t>::min(), 123456789};
  const std::string path = (temp_dir() / "round_trip.safetensors").string();
  kvq::write_safetensors(path,
                         {{"z.f32", view_of(f32, DType::F32, {2, 3})},
                          {"a.u8", view_of(u8, DType::U8, {3})},
                          {"m.f16", view_of(f16, DType::F16, {4})},
                          {"b.bf16", view_of(bf16, DType::BF16, {1, 2})},
                          {"i.i32", view_of(i32, DType::I32, {2, 2})},
                          {"empty", kvq::TensorView{nullptr, DType::F32, {0, 4}}}},
                         {{"model", "test"}, {"text", "a \"quoted\" line\n"}});

  // Header length is a multiple of 8, so the data area starts 8-aligned in the file.
  const std::vector<uint8_t> raw = bytes_of_file(path);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | raw[static_cast<size_t>(i)];
  CHECK(header_len % 8 == 0);
  CHECK(raw.size() == 8 + header_len + 24 + 3 + 8 + 4 + 16);
  // Data in the given order: z.f32 first, right after the header.
  float first;
  std::memcpy(&first, raw.data() + 8 + header_len, 4);
  CHECK(first == 1.5f);

  const auto file = kvq::SafetensorsFile::open(path);
  CHECK(file.names() ==
        std::vector<std::string>{"a.u8", "b.bf16", "empty", "i.i32", "m.f16", "z.f32"});
  CHECK(file.metadata().at("model") == "test");
  CHECK(file.metadata().at("text") == "a \"quoted\" line\n");
  CHECK(file.view("z.f32").shape == kvq::Shape{2, 3});
  const std::vector<float> f32_back = file.read_f32("z.f32");
  REQUIRE(f32_back.size() == f32.size());
  for (size_t i = 0; i < f32.size(); ++i)
    CHECK(std::bit_cast<uint32_t>(f32_back[i]) == std::bit_cast<uint32_t>(f32[i]));
  CHECK(view_values<uint8_t>(file.view("a.u8")) == u8);
  CHECK(file.view("m.f16").dtype == DType::F16);
  CHECK(view_values<uint16_t>(file.view("m.f16")) == f16);
  CHECK(reinterpret_cast<uintptr_t>(file.view("m.f16").data) % 2 == 0);  // realigned copy
  CHECK(view_values<uint16_t>(file.view("b.bf16")) == bf16);
  CHECK(file.read_f32("b.bf16") == std::vector<float>{3.0f, kvq::bf16_to_float(bf16[1])});
  CHECK(file.read_i32("i.i32") == i32);
  CHECK(file.view("empty").numel() == 0);
  CHECK(file.has("a.u8"));
  CHECK_FALSE(file.has("__metadata__"));
}

TEST_CASE("safetensors: a hand-built file (unpadded header) reads back byte for byte") {
  const std::string header =
      R"({"b":{"dtype":"U8","shape":[3],"data_offsets":[8,11]},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"k":"v"}})";
  // 1.5f = 0x3FC00000 and -2.0f = 0xC0000000, little-endian; then three bytes.
  const std::string path = raw_file("hand.safetensors", header,
                                    {0x00, 0x00, 0xC0, 0x3F, 0x00, 0x00, 0x00, 0xC0, 7, 8, 9});
  const auto file = kvq::SafetensorsFile::open(path);
  CHECK(file.read_f32("a") == std::vector<float>{1.5f, -2.0f});
  CHECK(view_values<uint8_t>(file.view("b")) == std::vector<uint8_t>{7, 8, 9});
  CHECK(file.metadata() == std::map<std::string, std::string>{{"k", "v"}});
}

TEST_CASE("safetensors: hostile files are rejected naming the file and the tensor") {
  const std::vector<uint8_t> eight(8, 0);
  // {"name": body, ...} built by appending (GCC 12 misreports "lit" + string under -Wrestrict).
  const auto header = [](std::initializer_list<std::pair<const char*, std::string>> entries) {
    std::string out = "{";
    for (const auto& [name, body] : entries) {
      if (out.size() > 1) out += ',';
      out += '"';
      out += name;
      out += "\":";
      out += body;
    }
    out += '}';
    return out;
  };
  SECTION("shorter than 8 bytes") {
    const std::string path = (temp_dir() / "short.safetensors").string();
    std::ofstream(path, std::ios::binary) << "abcde";
    REQUIRE_THROWS_WITH(kvq::SafetensorsFile::open(path),
                        Contains(path) && Contains("shorter than the 8-byte"));
  }
  SECTION("header length beyond the file") {
    const std::string path = raw_file("beyond.safetensors", 1000, "{}", {});
    REQUIRE_THROWS_WITH(kvq::SafetensorsFile::open(path), Contains(path) && Contains("beyond"));
  }
  SECTION("header length above 100 MiB") {
    const std::string path = raw_file("huge_header.safetensors", uint64_t{1} << 40, "{}", {});
    REQUIRE_THROWS_WITH(kvq::SafetensorsFile::open(path), Contains("exceeds 100 MiB"));
  }
  SECTION("header not JSON") {
    const std::string path = raw_file("bad_json.safetensors", "{\"x\": [1, 2", {});
    REQUIRE_THROWS_WITH(kvq::SafetensorsFile::open(path), Contains(path) && Contains("JSON"));
  }
  SECTION("header not an object") {
    const std::string path = raw_file("array.safetensors", "[1, 2]", {});
    REQUIRE_THROWS_WITH(kvq::SafetensorsFile::open(path), Contains("not a JSON object"));
  }
  SECTION("offsets beyond the data area") {
    const std::string path =
        raw_file("range.safetensors",
                 header({{"x", R"({"dtype":"F32","shape":[4],"data_offsets":[0,16]})"}}), eight);
    REQUIRE_THROWS_WITH(kvq::SafetensorsFile::open(path),
                        Contains(path) && Contains("tensor 'x'") && Contains("beyond the data"));
  }
  SECTION("end before begin") {
    const std::string path =
        raw_file("reversed.safetensors",
                 header({{"x", R"({"dtype":"U8","shape":[0],"data_offsets":[8,0]})"}}), eight);
    REQUIRE_THROWS_WITH(kvq::SafetensorsFile::open(path),
                        Contains("tensor 'x'") && Contains("end before begin"));
  }
  SECTION("overlapping tensors") {
    const std::string path =
        raw_file("overlap.safetensors",
                 header({{"x", R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})"},
                         {"y", R"({"dtype":"F32","shape":[2],"data_offsets":[4,12]})"}}),
                 std::vector<uint8_t>(12, 0));
    REQUIRE_THROWS_WITH(kvq::SafetensorsFile::open(path), Contains(path) &&
                                                              Contains("tensor 'y'") &&
                                                              Contains("overlaps tensor 'x'"));
  }
  SECTION("byte count does not match dtype and shape") {
    const std::string path =
        raw_file("bytes.safetensors",
                 header({{"x", R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"}}), eight);
    REQUIRE_THROWS_WITH(kvq::SafetensorsFile::open(path),
                        Contains("tensor 'x'") && Contains("8 bytes for F32 [3], expected 12"));
  }
  SECTION("unsupported dtype") {
    const std::string path =
        raw_file("dtype.safetensors",
                 header({{"x", R"({"dtype":"F64","shape":[1],"data_offsets":[0,8]})"}}), eight);
    REQUIRE_THROWS_WITH(kvq::SafetensorsFile::open(path),
                        Contains("tensor 'x'") && Contains("unsupported dtype 'F64'"));
  }
  SECTION("shape product overflows int64") {
    const std::string path =
        raw_file("overflow.safetensors",
                 header({{"x", R"({"dtype":"U8","shape":[4294967296,4294967296],)"
                               R"("data_offsets":[0,8]})"}}),
                 eight);
    REQUIRE_THROWS_WITH(kvq::SafetensorsFile::open(path),
                        Contains("tensor 'x'") && Contains("overflows"));
  }
  SECTION("byte count overflows int64") {
    const std::string path =
        raw_file("overflow_bytes.safetensors",
                 header({{"x", R"({"dtype":"F32","shape":[4611686018427387904],)"
                               R"("data_offsets":[0,8]})"}}),
                 eight);
    REQUIRE_THROWS_WITH(kvq::SafetensorsFile::open(path),
                        Contains("tensor 'x'") && Contains("overflows the byte count"));
  }
  SECTION("negative or fractional dimension") {
    const std::string neg =
        raw_file("negative.safetensors",
                 header({{"x", R"({"dtype":"U8","shape":[-1],"data_offsets":[0,8]})"}}), eight);
    REQUIRE_THROWS_WITH(kvq::SafetensorsFile::open(neg),
                        Contains("tensor 'x'") && Contains("non-negative integer"));
    const std::string frac =
        raw_file("fraction.safetensors",
                 header({{"x", R"({"dtype":"U8","shape":[8.0],"data_offsets":[0,8]})"}}), eight);
    REQUIRE_THROWS_WITH(kvq::SafetensorsFile::open(frac), Contains("tensor 'x'"));
  }
  SECTION("missing or mistyped fields") {
    const std::string path = raw_file(
        "missing.safetensors", header({{"x", R"({"shape":[8],"data_offsets":[0,8]})"}}), eight);
    REQUIRE_THROWS_WITH(kvq::SafetensorsFile::open(path),
                        Contains("tensor 'x'") && Contains("dtype"));
    const std::string offsets =
        raw_file("offsets.safetensors",
                 header({{"x", R"({"dtype":"U8","shape":[8],"data_offsets":[0]})"}}), eight);
    REQUIRE_THROWS_WITH(kvq::SafetensorsFile::open(offsets),
                        Contains("tensor 'x'") && Contains("data_offsets"));
  }
  SECTION("non-string metadata") {
    const std::string path = raw_file("meta.safetensors", R"({"__metadata__":{"a":1}})", {});
    REQUIRE_THROWS_WITH(kvq::SafetensorsFile::open(path),
                        Contains(path) && Contains("__metadata__ 'a'"));
  }
  SECTION("duplicate tensor names") {
    const std::string body = R"({"dtype":"U8","shape":[4],"data_offsets":[0,4]})";
    const std::string path = raw_file("dup.safetensors", header({{"x", body}, {"x", body}}), eight);
    REQUIRE_THROWS_WITH(kvq::SafetensorsFile::open(path), Contains("'x' twice"));
  }
  SECTION("absent tensor and wrong dtype on read") {
    const std::string path =
        raw_file("read.safetensors",
                 header({{"x", R"({"dtype":"I32","shape":[2],"data_offsets":[0,8]})"}}), eight);
    const auto file = kvq::SafetensorsFile::open(path);
    REQUIRE_THROWS_WITH(file.view("nope"), Contains(path) && Contains("tensor 'nope'"));
    REQUIRE_THROWS_WITH(file.read_f32("x"), Contains("tensor 'x'"));
  }
  SECTION("non-finite values on read_f32 name the tensor and index") {
    // Second value 0x7FC00000 is a NaN.
    const std::string path = raw_file(
        "nan.safetensors", header({{"x", R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})"}}),
        {0, 0, 0, 0, 0x00, 0x00, 0xC0, 0x7F});
    const auto file = kvq::SafetensorsFile::open(path);
    REQUIRE_THROWS_WITH(file.read_f32("x"), Contains("tensor 'x'") && Contains("index 1"));
  }
}

TEST_CASE("safetensors: writer replaces atomically and leaves no temporary file") {
  const fs::path dir = temp_dir() / "atomic";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = (dir / "out.safetensors").string();
  const std::vector<float> one = {1.0f}, two = {2.0f, 3.0f};
  kvq::write_safetensors(path, {{"x", view_of(one, DType::F32, {1})}}, {});
  kvq::write_safetensors(path, {{"x", view_of(two, DType::F32, {2})}}, {});
  CHECK(kvq::SafetensorsFile::open(path).read_f32("x") == two);
  // A rejected write leaves the previous file intact and nothing else in the folder.
  REQUIRE_THROWS_WITH(
      kvq::write_safetensors(
          path, {{"x", view_of(one, DType::F32, {1})}, {"x", view_of(one, DType::F32, {1})}}, {}),
      Contains("tensor 'x'") && Contains("twice"));
  REQUIRE_THROWS_WITH(
      kvq::write_safetensors(path, {{"__metadata__", view_of(one, DType::F32, {1})}}, {}),
      Contains("reserved"));
  CHECK(kvq::SafetensorsFile::open(path).read_f32("x") == two);
  int entries = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    (void)e;
    ++entries;
  }
  CHECK(entries == 1);
}

TEST_CASE("safetensors: a header of 200000 tensors parses in linear time") {
  // Quadratic header handling (a per-tensor rescan) took 7 s at 20000 tensors, so 200000 would
  // run past the test's timeout; linear parsing takes about a second.
  constexpr int kTensors = 200000;
  std::string text = "{";
  std::vector<uint8_t> data;
  for (int i = 0; i < kTensors; ++i) {
    const std::string begin = std::to_string(4 * i), end = std::to_string(4 * i + 4);
    text += (i ? ",\"t" : "\"t") + std::to_string(i) + R"(":{"dtype":"I32","shape":[1],)" +
            R"("data_offsets":[)" + begin + "," + end + "]}";
    for (int b = 0; b < 4; ++b) data.push_back(static_cast<uint8_t>(i >> (8 * b)));
  }
  const auto file = kvq::SafetensorsFile::open(raw_file("many.safetensors", text + "}", data));
  CHECK(file.names().size() == kTensors);
  CHECK(file.read_i32("t199999") == std::vector<int32_t>{199999});
  // The duplicate check still sees the whole header: a repeated name at the very end.
  const std::string twice = text + R"(,"t7":{"dtype":"I32","shape":[0],"data_offsets":[0,0]}})";
  REQUIRE_THROWS_WITH(kvq::SafetensorsFile::open(raw_file("twice.safetensors", twice, data)),
                      Contains("twice.safetensors") && Contains("key 't7' twice"));
}

TEST_CASE("safetensors: metadata bytes that are not UTF-8 are written as U+FFFD, not an error") {
  // A recording's text cut inside a multi-byte character ("\xe2\x82" of a 3-byte euro sign).
  const std::string path = (temp_dir() / "utf8.safetensors").string();
  const std::vector<float> one = {1.0f};
  kvq::write_safetensors(path, {{"x", view_of(one, DType::F32, {1})}},
                         {{"text", "cost 5 \xe2\x82"}});
  CHECK(kvq::SafetensorsFile::open(path).metadata().at("text") == "cost 5 \xef\xbf\xbd");
}
