// The scenario runner end to end into a temporary SQLite file: rows per case and check, the run
// marked complete, and a deliberately wrong backend caught at the exact element it corrupts.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "backends/reference_backend.h"
#include "harness/run/runner.h"
#include "harness/io/safetensors.h"
#include "harness/scenario/scenario.h"
#include "harness/store/store.h"
#include "reference/error.h"
#include "tests/scratch.h"

namespace fs = std::filesystem;

namespace {

fs::path fresh_dir(const std::string& name) {
  const fs::path dir =
      kvq::testing::scratch_root("runner") / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

kvq::Scenario write_scenario(const fs::path& dir, const std::string& text) {
  const fs::path path = dir / "s.toml";
  std::ofstream(path) << text;
  return kvq::load_scenario(path.string());
}

// The reference, except that fwht flips the lowest bit of element 37 and quantize flips bit 0 of
// packed code byte 5; rotate_v is declared unsupported and token_absmax fails with an error.
class FlipBackend final : public kvq::Backend {
 public:
  static constexpr int64_t kFwhtIndex = 37;
  static constexpr int64_t kCodeByte = 5;

  std::string name() const override { return "flip"; }
  bool supports(kvq::Op op) const override { return op != kvq::Op::RotateV; }
  void fwht(std::span<float> x, int n) const override {
    ref_->fwht(x, n);
    uint32_t bits;
    std::memcpy(&bits, &x[kFwhtIndex], 4);
    bits ^= 1u;
    std::memcpy(&x[kFwhtIndex], &bits, 4);
  }
  std::vector<float> reorder(std::span<const float> x, int64_t rows,
                             std::span<const int32_t> perm) const override {
    return ref_->reorder(x, rows, perm);
  }
  std::vector<float> rotate_k(std::span<const float> k, const kvq::KvShape& shape,
                              const kvq::RotationParams& params) const override {
    return ref_->rotate_k(k, shape, params);
  }
  std::vector<float> rotate_v(std::span<const float> v, const kvq::KvShape& shape) const override {
    return ref_->rotate_v(v, shape);
  }
  kvq::Quantized quantize(std::span<const float> x, int64_t rows, int64_t cols,
                          const kvq::QuantParams& params) const override {
    kvq::Quantized q = ref_->quantize(x, rows, cols, params);
    q.codes[kCodeByte] ^= 1u;
    return q;
  }
  std::vector<float> dequantize(const kvq::Quantized& q) const override {
    return ref_->dequantize(q);
  }
  kvq::Quantized rotate_quantize(const kvq::TensorView& kv, const kvq::KvShape& shape,
                                 const kvq::RotateQuantizeParams& params) const override {
    return ref_->rotate_quantize(kv, shape, params);
  }
  kvq::TokenAbsmax token_absmax(std::span<const float>, int64_t, int64_t) const override {
    throw kvq::Error("flip: token_absmax broken on purpose");
  }
  std::vector<kvq::ExpertStat> expert_statistics(std::span<const int32_t> ids,
                                                 std::span<const float> absmax,
                                                 std::span<const int32_t> argmax, int64_t tokens,
                                                 int64_t top_k, int64_t experts) const override {
    return ref_->expert_statistics(ids, absmax, argmax, tokens, top_k, experts);
  }
  std::vector<float> attention_decode(std::span<const float> q, int64_t q_heads,
                                      const kvq::DecodeCache& cache) const override {
    return ref_->attention_decode(q, q_heads, cache);
  }

 private:
  std::unique_ptr<kvq::Backend> ref_ = kvq::make_reference_backend();
};

std::unique_ptr<kvq::Backend> make_flip() {
  return std::make_unique<FlipBackend>();
}

std::string scalar(const std::string& db, const std::string& sql) {
  kvq::Store store(db);
  const kvq::QueryResult r = kvq::run_query(store.handle(), sql);
  REQUIRE(r.rows.size() == 1);
  REQUIRE(r.rows[0].size() == 1);
  return r.rows[0][0];
}

}  // namespace

TEST_CASE("runner: a tiny scenario writes every case and check; the run is marked complete") {
  const fs::path dir = fresh_dir("tiny");
  const kvq::Scenario s = write_scenario(dir, R"([scenario]
backends = ["ref"]

[[case]]
op = "fwht"
tokens = 3
n = [4, 16]

[[case]]
op = "quantize"
tokens = 5
heads = 2
head_dim = 8
bits = 2
group = 8
axis = "channel"

[[case]]
op = "attention_decode"
tokens = 16
heads = 2
head_dim = 8
q_heads = 4
bits = 4
group = 8

[[case]]
op = "method"
method = "rtn"
tokens = 96
bits = [2, 4]

[[case]]
name = "baseline"
op = "method"
method = "fp32"
tokens = 96
)");
  kvq::RunOptions options;
  options.db = (dir / "sub" / "kvq.db").string();  // the parent folder is created
  const kvq::RunSummary summary = kvq::run_scenario(s, options);
  CHECK(summary.cases == 7);
  CHECK(summary.passed == 4);
  CHECK(summary.failed == 0);
  CHECK(summary.measured == 3);
  CHECK(summary.failures.empty());

  const std::string run = std::to_string(summary.run_id);
  CHECK(scalar(options.db, "SELECT status FROM runs WHERE id = " + run) == "complete");
  CHECK(scalar(options.db, "SELECT count(*) FROM cases WHERE run_id = " + run) == "7");
  CHECK(scalar(options.db,
               "SELECT group_concat(name, ' ') FROM (SELECT name FROM cases ORDER "
               "BY id)") ==
        "fwht/n4 fwht/n16 quantize attention_decode method/b2 method/b4 baseline");
  CHECK(scalar(options.db, "SELECT count(*) FROM checks WHERE status = 'pass'") == "4");
  // attention_decode is gated against the fp64 oracle (docs/spec.md §7), the rest against ref.
  CHECK(scalar(options.db,
               "SELECT k.reference FROM checks k JOIN cases c ON c.id = k.case_id "
               "WHERE c.name = 'attention_decode'") == "fp64 oracle");
  CHECK(scalar(options.db, "SELECT repro FROM cases WHERE name = 'fwht/n16'") ==
        "kvq run " + s.path + " --filter '^fwht/n16$'");
  // Methods are measured, not gated. Independent properties of the stored NMSE: the fp32
  // baseline is exact, and RTN at 4 bits loses strictly less than at 2 bits (and something).
  const auto kv_nmse = [&](const std::string& name) {
    return std::stod(scalar(options.db,
                            "SELECT m.value FROM measurements m JOIN cases c ON c.id = m.case_id "
                            "WHERE c.name = '" +
                                name + "' AND m.metric = 'kv_nmse'"));
  };
  CHECK(kv_nmse("baseline") == 0.0);
  CHECK(kv_nmse("method/b4") > 0.0);
  CHECK(kv_nmse("method/b4") < kv_nmse("method/b2"));
  CHECK(scalar(options.db,
               "SELECT count(*) FROM checks k JOIN cases c ON c.id = k.case_id "
               "WHERE c.op = 'rtn'") == "0");
}

TEST_CASE("runner: a backend that flips one bit fails at exactly that element") {
  const fs::path dir = fresh_dir("flip");
  const kvq::Scenario s = write_scenario(dir, R"([[case]]
op = "fwht"
tokens = 4
n = 16

[[case]]
op = "quantize"
tokens = 4
heads = 2
head_dim = 16
bits = 4
group = 32

[[case]]
op = "rotate_v"
tokens = 2
heads = 2
head_dim = 8

[[case]]
op = "token_absmax"
tokens = 4
hidden = 8
)");
  kvq::RunOptions options;
  options.db = (dir / "kvq.db").string();
  options.backends = {"ref", "flip"};
  options.extra_backends.push_back({"flip", true, "test: flips one bit", &make_flip});
  const kvq::RunSummary summary = kvq::run_scenario(s, options);
  CHECK(summary.cases == 4);
  CHECK(summary.passed == 4);   // ref on each case
  CHECK(summary.failed == 3);   // flip: fwht, quantize (fail), token_absmax (error)
  CHECK(summary.skipped == 1);  // flip: rotate_v unsupported
  REQUIRE(summary.failures.size() == 3);

  const kvq::Failure& fwht = summary.failures[0];
  CHECK(fwht.case_name == "fwht");
  CHECK(fwht.backend == "flip");
  CHECK(fwht.where == "values");
  CHECK(fwht.first_mismatch == FlipBackend::kFwhtIndex);
  CHECK(fwht.expected != fwht.got);
  CHECK(fwht.repro == "kvq run " + s.path + " --filter '^fwht$' --backends flip");

  const kvq::Failure& quant = summary.failures[1];
  CHECK(quant.case_name == "quantize");
  CHECK(quant.where == "codes");
  CHECK(quant.first_mismatch == FlipBackend::kCodeByte);

  CHECK(summary.failures[2].case_name == "token_absmax");
  CHECK(summary.failures[2].where == "error");
  CHECK_THAT(summary.failures[2].got, Catch::Matchers::Contains("broken on purpose"));

  // The store has the same story, and the run is complete (failing checks are results).
  CHECK(scalar(options.db, "SELECT status FROM runs") == "complete");
  CHECK(scalar(options.db,
               "SELECT k.first_mismatch FROM checks k JOIN cases c ON "
               "c.id = k.case_id WHERE c.name = 'fwht' AND k.backend = 'flip'") ==
        std::to_string(FlipBackend::kFwhtIndex));
  CHECK(scalar(options.db,
               "SELECT k.status FROM checks k JOIN cases c ON c.id = k.case_id "
               "WHERE c.name = 'rotate_v' AND k.backend = 'flip'") == "unsupported");
  CHECK(scalar(options.db,
               "SELECT k.status FROM checks k JOIN cases c ON c.id = k.case_id "
               "WHERE c.name = 'token_absmax' AND k.backend = 'flip'") == "error");
  CHECK(scalar(options.db,
               "SELECT count(*) FROM checks WHERE backend = 'ref' AND status = "
               "'pass'") == "4");
}

TEST_CASE("runner: a backend that is not available here is skipped, not failed") {
  const fs::path dir = fresh_dir("ghost");
  const kvq::Scenario s = write_scenario(dir, R"([scenario]
backends = ["ref", "ghost"]

[[case]]
op = "fwht"
tokens = 2
n = 8
)");
  kvq::RunOptions options;
  options.db = (dir / "kvq.db").string();
  options.extra_backends.push_back({"ghost", false, "test: never available", nullptr});
  const kvq::RunSummary summary = kvq::run_scenario(s, options);
  CHECK(summary.passed == 1);
  CHECK(summary.skipped == 1);
  CHECK(summary.failed == 0);
  CHECK(scalar(options.db, "SELECT got FROM checks WHERE backend = 'ghost'") ==
        "not available: test: never available");
  // The scenario names ghost, so the gate fails on its skip unless --allow-skip.
  REQUIRE(summary.backends.size() == 2);
  CHECK(summary.backends[1].backend == "ghost");
  CHECK(summary.backends[1].named);
  CHECK(summary.backends[1].ran() == 0);
  CHECK_THAT(kvq::gate_failure(summary, false),
             Catch::Matchers::Contains("backend 'ghost' was named") &&
                 Catch::Matchers::Contains("not available: test: never available"));
  CHECK(kvq::gate_failure(summary, true).empty());
}

TEST_CASE("runner: the gate fails when a named backend lacks a case's op, or no check ran") {
  const fs::path dir = fresh_dir("lacks");
  const kvq::Scenario s = write_scenario(dir, R"([[case]]
op = "rotate_v"
tokens = 2
heads = 2
head_dim = 8

[[case]]
op = "fwht"
tokens = 2
n = 8
)");
  kvq::RunOptions options;
  options.db = (dir / "kvq.db").string();
  options.backends = {"ref", "flip"};
  options.filter = "rotate_v";
  options.extra_backends.push_back({"flip", true, "test: flips one bit", &make_flip});
  kvq::RunSummary summary = kvq::run_scenario(s, options);
  // ref: 1 of 1 ran and passed; flip: 0 of 1 ran (FlipBackend declares rotate_v unsupported).
  REQUIRE(summary.backends.size() == 2);
  CHECK(summary.backends[0].backend == "ref");
  CHECK(summary.backends[0].ran() == 1);
  CHECK(summary.backends[0].passed == 1);
  CHECK(summary.backends[1].backend == "flip");
  CHECK(summary.backends[1].ran() == 0);
  CHECK(summary.backends[1].skipped == 1);
  CHECK(summary.failed == 0);
  CHECK_THAT(kvq::gate_failure(summary, false),
             Catch::Matchers::Contains("backend 'flip' was named") &&
                 Catch::Matchers::Contains("does not implement rotate_v"));
  CHECK(kvq::gate_failure(summary, true).empty());

  // Only the unavailable backend: no check ran at all.
  options.backends = {"ghost"};
  options.filter = "fwht";
  options.extra_backends.push_back({"ghost", false, "test: never available", nullptr});
  summary = kvq::run_scenario(s, options);
  CHECK(summary.passed == 0);
  CHECK(summary.skipped == 1);
  CHECK_THAT(kvq::gate_failure(summary, false), Catch::Matchers::Contains("'ghost'"));
  CHECK(kvq::gate_failure(summary, true).empty());
  // A run whose cases are measured only (gate = "none") has no check either.
  const kvq::Scenario measured = write_scenario(dir, R"([[case]]
op = "fwht"
tokens = 2
n = 8
gate = "none"
)");
  options.backends = {"ref"};
  options.filter.clear();
  summary = kvq::run_scenario(measured, options);
  CHECK(summary.measured == 1);
  CHECK_THAT(kvq::gate_failure(summary, false), Catch::Matchers::StartsWith("no check ran"));
  CHECK(kvq::gate_failure(summary, true).empty());
}

TEST_CASE("runner: --filter selects cases by regex; a bad regex or backend is an error") {
  const fs::path dir = fresh_dir("filter");
  const kvq::Scenario s = write_scenario(dir, R"([[case]]
op = "fwht"
tokens = 2
n = [4, 8]

[[case]]
op = "rotate_v"
tokens = 2
heads = 1
head_dim = 8
)");
  kvq::RunOptions options;
  options.db = (dir / "kvq.db").string();
  options.backends = {"ref"};
  options.filter = "^fwht/n8$";
  const kvq::RunSummary summary = kvq::run_scenario(s, options);
  CHECK(summary.cases == 1);
  CHECK(scalar(options.db, "SELECT name FROM cases") == "fwht/n8");

  options.filter = "(";
  CHECK_THROWS_WITH(kvq::run_scenario(s, options), Catch::Matchers::Contains("--filter"));
  options.filter.clear();
  options.backends = {"no-such-backend"};
  CHECK_THROWS_WITH(kvq::run_scenario(s, options), Catch::Matchers::Contains("no-such-backend"));
}

TEST_CASE("runner: zero tolerance on attention_decode fails against the fp64 oracle") {
  const fs::path dir = fresh_dir("tolerance");
  const kvq::Scenario s = write_scenario(dir, R"([[case]]
op = "attention_decode"
tokens = 64
heads = 2
head_dim = 16
q_heads = 2
bits = 2
group = 16
tolerance = [0.0, 1e-3]
backends = ["ref"]
)");
  kvq::RunOptions options;
  options.db = (dir / "kvq.db").string();
  const kvq::RunSummary summary = kvq::run_scenario(s, options);
  // fp32 accumulation differs from fp64 in the last bits of some output, so tolerance 0 fails
  // and docs/spec.md §7's 1e-3 passes.
  CHECK(summary.failed == 1);
  CHECK(summary.passed == 1);
  REQUIRE(summary.failures.size() == 1);
  CHECK(summary.failures[0].case_name == "attention_decode/tol0.0");
  CHECK(summary.failures[0].where == "values");
  CHECK(summary.failures[0].first_mismatch >= 0);
}

TEST_CASE("runner: a misspelt backend in the scenario file is an error, not a silent skip") {
  const fs::path dir = fresh_dir("misspelt");
  kvq::RunOptions options;
  options.db = (dir / "kvq.db").string();
  const kvq::Scenario in_scenario = write_scenario(dir, R"([scenario]
backends = ["ref", "avx5l2"]

[[case]]
op = "fwht"
tokens = 2
n = 4
)");
  CHECK_THROWS_WITH(kvq::run_scenario(in_scenario, options),
                    Catch::Matchers::Contains("unknown backend 'avx5l2'") &&
                        Catch::Matchers::Contains("[scenario]"));
  const kvq::Scenario in_case = write_scenario(dir, R"([[case]]
op = "fwht"
tokens = 2
n = 4
backends = ["ref", "cdua"]
)");
  CHECK_THROWS_WITH(kvq::run_scenario(in_case, options),
                    Catch::Matchers::Contains("unknown backend 'cdua'") &&
                        Catch::Matchers::Contains("s.toml:1"));
}

TEST_CASE("runner: a recording with 0 tokens is an error naming the tensor, never a crash") {
  const fs::path dir = fresh_dir("zero_tokens");
  // Every layer tensor present, with 0 tokens (rotate_k's calibration and attention_decode's
  // last query read token 0 of them).
  const std::vector<float> none;
  std::vector<kvq::NamedTensor> tensors;
  for (const char* what : {"k", "k_pre_rope", "v", "q"})
    tensors.push_back({std::string("layers.0.") + what, {none.data(), kvq::DType::F32, {0, 4, 8}}});
  kvq::write_safetensors((dir / "rec.safetensors").string(), tensors, {});
  // `layers` given, so the loader's whole-recording shape check does not run: the op's own does.
  const kvq::Scenario s = write_scenario(dir, R"([scenario]
backends = ["ref"]

[[case]]
op = ["rotate_k", "rotate_quantize", "attention_decode"]
input = "rec.safetensors"
layers = 0
)");
  kvq::RunOptions options;
  options.db = (dir / "kvq.db").string();
  const kvq::RunSummary summary = kvq::run_scenario(s, options);
  CHECK(summary.cases == 3);
  CHECK(summary.passed == 0);
  REQUIRE(summary.failures.size() == 3);
  for (const kvq::Failure& f : summary.failures) {
    INFO(f.case_name << ": " << f.got);
    CHECK_THAT(f.got, Catch::Matchers::Contains("rec.safetensors") &&
                          Catch::Matchers::Contains("'layers.0.k") &&
                          Catch::Matchers::Contains("[0, 4, 8]"));
  }
  // Without `layers` the loader refuses the scenario before running anything.
  CHECK_THROWS_WITH(write_scenario(dir, "[[case]]\nop = \"rotate_k\"\ninput = \"rec.safetensors\"\n"),
                    Catch::Matchers::Contains("s.toml:1") &&
                        Catch::Matchers::Contains("'layers.0.k_pre_rope' has shape [0, 4, 8]"));
}
