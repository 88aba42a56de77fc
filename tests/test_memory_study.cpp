// The memory study (harness/memory_study): bytes per token against layouts counted by hand
// (docs/spec.md §3: packed codes + fp16 scale + fp16 zero per group), the largest batch by hand
// arithmetic, and one `kvq run` of the op.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>

#include "harness/recording/synth.h"
#include "harness/studies/memory.h"
#include "kvq_process.h"
#include "reference/error.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

// 2 KV heads of 64 = 128 channels: one token-axis group of G = 128 per token and tensor.
const kvq::RecordingLayers& recording() {
  static const kvq::RecordingLayers rec = [] {
    kvq::SynthParams p;
    p.kv_heads = 2;
    p.heads = 2;
    p.head_dim = 64;
    p.tokens = 256;
    p.experts = 0;
    return kvq::load_recording_layers(kvq::synthesize(p));
  }();
  return rec;
}

kvq::MethodStorage measure(kvq::Method m) {
  kvq::MethodParams p;
  p.method = m;
  p.bits = 2;
  return kvq::measure_storage(recording(), p);
}

kvq::MemoryModel model() {
  kvq::MemoryModel m;
  m.layers = 10;
  m.kv_heads = 2;
  m.head_dim = 64;
  m.budget_gib = 1.0;
  m.weights_gib = 0.5;
  return m;
}

}  // namespace

TEST_CASE("memory: rtn 2-bit with per-token groups of 128 costs 36 bytes per token and tensor",
          "[memory]") {
  const kvq::MethodStorage s = measure(kvq::Method::Rtn);
  // Per token and tensor: 128 codes x 2 bits = 32 bytes, one fp16 scale and one fp16 zero.
  CHECK(s.quantized_row_bits[0] == 36 * 8);
  CHECK(s.quantized_row_bits[1] == 36 * 8);
  CHECK(s.kept_rows[0] == 0.0);
  CHECK(s.recording_bits_per_element == 36.0 * 8 / 128);  // 2 + 32 / 128 = 2.25
  const kvq::MemoryResult r = kvq::memory_at_context(s, model(), 4096);
  CHECK(r.bytes_per_token == 2 * 36 * 10);       // K and V, 10 layers
  CHECK(r.fp16_bytes_per_token == 2 * 128 * 2 * 10);  // fp16: exactly 2 bytes per element
  CHECK(r.bits_per_element == 2.25);
}

TEST_CASE("memory: the largest batch by hand arithmetic", "[memory]") {
  const kvq::MemoryResult r = kvq::memory_at_context(measure(kvq::Method::Rtn), model(), 4096);
  // 0.5 GiB = 536870912 bytes free; rtn: 720 B x 4096 = 2949120 per sequence -> 182 (182.04);
  // fp16: 5120 B x 4096 = 20971520 -> 25 (25.6).
  CHECK(r.max_batch == 182);
  CHECK(r.fp16_max_batch == 25);
  CHECK(r.batch == 25);
  const double weights = 536870912.0;
  CHECK(r.memory_ratio == Approx((weights + 25 * 20971520.0) / (weights + 25 * 2949120.0)));
  CHECK(r.kv_ratio == Approx(5120.0 / 720.0));
  // At a context where fp16 fits no sequence: 5120 x 131072 = 640 MiB > 512 MiB.
  const kvq::MemoryResult big =
      kvq::memory_at_context(measure(kvq::Method::Rtn), model(), 131072, 3);
  CHECK(big.fp16_max_batch == 0);
  CHECK(big.max_batch == 5);  // 536870912 / (720 x 131072 = 94371840) = 5.69
  CHECK(big.batch == 3);
}

TEST_CASE("memory: KIVI's fp16 window is counted once per sequence, not per token",
          "[memory]") {
  const kvq::MethodStorage s = measure(kvq::Method::Kivi);
  // R = 128 rows of 128 fp16 values + a 32-bit token index, in K and in V.
  CHECK(s.kept_rows[0] == 128.0);
  CHECK(s.kept_rows[1] == 128.0);
  CHECK(s.kept_bits[0] == 128 * (128 * 16 + 32));
  // K per channel in groups of 128 tokens: per 128 tokens, 128 channels x (32 + 4) bytes.
  CHECK(s.quantized_row_bits[0] == 36 * 8);
  CHECK(s.quantized_row_bits[1] == 36 * 8);
  const kvq::MemoryResult r = kvq::memory_at_context(s, model(), 4096);
  const double per_layer = 2 * 128 * (128 * 2 + 4) + (4096 - 128) * 72;
  CHECK(r.bytes_per_token == Approx(10 * per_layer / 4096).epsilon(1e-12));
}

TEST_CASE("memory: the fp32 cache costs 32 bits per element and the inputs are checked",
          "[memory]") {
  const kvq::MethodStorage s = measure(kvq::Method::Fp32);
  CHECK(s.quantized_row_bits[0] == 128 * 32);
  CHECK(kvq::memory_at_context(s, model(), 1000).kv_ratio == 0.5);
  kvq::MemoryModel bad = model();
  bad.weights_gib = 2.0;
  CHECK_THROWS_WITH(kvq::memory_at_context(s, bad, 4096), Contains("leaves nothing"));
  bad = model();
  bad.kv_heads = 40;
  CHECK_THROWS_WITH(kvq::memory_at_context(s, bad, 4096), Contains("128 KV channels"));
  const kvq::MethodStorage kivi = measure(kvq::Method::Kivi);
  CHECK_THROWS_WITH(kvq::memory_at_context(kivi, model(), 100), Contains("shorter than"));
}

TEST_CASE("memory: kvq run stores bytes per token and batch ratios per method and context",
          "[memory][cli]") {
  const kvq::testing::ScenarioRun run = kvq::testing::run_scenario(
      "memory", "[[case]]\nname = \"mem\"\nop = \"memory\"\nlayers = 10\nheads = 4\n"
                "head_dim = 32\nbudget_gib = 1.0\nweights_gib = 0.5\n"
                "method = [\"rtn\", \"rotatekv\"]\ncontext = [4096, 131072]\n");
  INFO(run.result.err);
  REQUIRE(run.result.status == 0);
  const std::vector<kvq::testing::StoredMeasurement> rows = kvq::testing::stored_measurements(
      run.db, {"bytes_per_token", "max_batch", "paper_batch_ratio"}, "c.id, m.id");
  REQUIRE(rows.size() == 2 + 2 + 3 + 3);
  CHECK(rows[0].case_name.find("rtn") != std::string::npos);
  CHECK(rows[0].value == 720.0);  // the hand count above
  CHECK(rows[1].value == 182.0);
  CHECK(rows[3].value == 5.0);
  // rotatekv: pivot rows in fp16 cost more than rtn at 4K; the paper's 5.75x is stored beside.
  CHECK(rows[4].value > 720.0);
  CHECK(rows[6].value == 5.75);
  fs::remove_all(run.dir);
}
