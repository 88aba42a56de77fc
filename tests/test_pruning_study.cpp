// The Super Expert pruning study (harness/pruning_study) on the synthetic MoE: the massive
// activations are recomputed here from the tensors in fp64 (docs/spec.md §4 criterion with its own
// median), independently of reference/sinks.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>

#include "harness/recording/synth.h"
#include "harness/studies/pruning.h"
#include "kvq_process.h"
#include "reference/error.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

const kvq::Tensor& tensor(const kvq::SynthRecording& r, const std::string& name) {
  for (const auto& [n, t] : r.tensors)
    if (n == name) return t;
  throw std::runtime_error("no tensor " + name);
}

std::string lname(int64_t l, const std::string& what) {
  return "layers." + std::to_string(l) + "." + what;
}

// Per layer: (number of tokens with a_t >= 100 and a_t >= 100 x median, max a_t / median).
std::pair<int64_t, double> massive_fp64(const kvq::SynthRecording& r, const kvq::SynthParams& p,
                                        int64_t l) {
  const float* h = tensor(r, lname(l, "hidden_in")).data<float>();
  std::vector<double> a(static_cast<size_t>(p.tokens), 0.0);
  for (int64_t t = 0; t < p.tokens; ++t)
    for (int64_t c = 0; c < p.hidden; ++c)
      a[static_cast<size_t>(t)] =
          std::max(a[static_cast<size_t>(t)], std::fabs(static_cast<double>(h[t * p.hidden + c])));
  std::vector<double> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[static_cast<size_t>(p.tokens / 2)];
  int64_t n = 0;
  for (double x : a) n += x >= 100.0 && x >= 100.0 * median;
  return {n, sorted.back() / median};
}

kvq::PruningParams defaults() {
  return {};  // SynthParams defaults: 4 layers, 128 experts, 2 planted Super Experts
}

}  // namespace

TEST_CASE("synth: pruning the first Super Expert removes the massive activations it feeds",
          "[pruning]") {
  kvq::SynthParams p;
  const kvq::SynthRecording before = kvq::synthesize(p);
  REQUIRE(before.truth.super_experts.size() == 2);
  const auto se1 = before.truth.super_experts[0];
  REQUIRE(se1.first == 0);  // feeds layer 1 alone (the second Super Expert is in layer 1)
  kvq::SynthParams pruned = p;
  pruned.pruned_experts = {se1};
  const kvq::SynthRecording after = kvq::synthesize(pruned);
  // Before: the two planted massive tokens at every layer from 1 on.
  for (int64_t l = 1; l < p.layers; ++l) REQUIRE(massive_fp64(before, p, l).first == 2);
  // After: layer 1 has none, its max ratio is far below docs/spec.md's tau_rel = 100.
  const auto [n1, ratio1] = massive_fp64(after, p, 1);
  CHECK(n1 == 0);
  CHECK(ratio1 < 100.0);
  // Layer 0 (upstream of every Super Expert) is untouched bit for bit.
  const kvq::Tensor& h0a = tensor(before, lname(0, "hidden_in"));
  const kvq::Tensor& h0b = tensor(after, lname(0, "hidden_in"));
  CHECK(h0a.bytes == h0b.bytes);
  // The pruned expert's outputs are zero wherever it is routed; the others' unchanged.
  for (int64_t l = 0; l < p.layers; ++l) {
    const int32_t* ids = tensor(after, lname(l, "experts.ids")).data<int32_t>();
    const float* abs_after = tensor(after, lname(l, "experts.down_absmax")).data<float>();
    const float* abs_before = tensor(before, lname(l, "experts.down_absmax")).data<float>();
    for (int64_t i = 0; i < p.tokens * p.top_k; ++i) {
      if (l == se1.first && ids[i] == se1.second)
        CHECK(abs_after[i] == 0.0f);
      else
        CHECK(abs_after[i] == abs_before[i]);
    }
  }
  CHECK(after.metadata.at("pruned_experts") == "[[0," + std::to_string(se1.second) + "]]");
  CHECK(before.metadata.count("pruned_experts") == 0);
}

TEST_CASE("pruning study: every Super Expert pruned leaves no massive activation and no sink",
          "[pruning]") {
  const kvq::PruningResult r = kvq::run_pruning(defaults(), "all_se");
  CHECK(r.super_expert);
  CHECK(r.experts.size() == 2);
  CHECK(r.before.massive == 2 * 3);  // tokens 0 and 5 in layers 1, 2, 3
  CHECK(r.after.massive == 0);
  CHECK(r.after.max_ratio < 100.0);
  // Sinks: both planted tokens score far above tau_mass = 5 before, at most uniform after.
  REQUIRE(r.before.sink_scores.size() == 2);
  for (double s : r.before.sink_scores) CHECK(s > 20.0);
  for (double s : r.after.sink_scores) CHECK(s < 2.0);
  CHECK(r.before.sinks == 2);
  CHECK(r.after.sinks == 0);
  CHECK_FALSE(r.activations_identical);
}

TEST_CASE("pruning study: the study's per-layer counts and ratios match an fp64 recomputation",
          "[pruning]") {
  const kvq::PruningParams params = defaults();
  const kvq::PruningResult r = kvq::run_pruning(params, "se1");
  kvq::SynthParams pruned = params.synth;
  pruned.pruned_experts = r.experts;
  const kvq::SynthRecording after = kvq::synthesize(pruned);
  const kvq::SynthRecording before = kvq::synthesize(params.synth);
  for (int64_t l = 0; l < params.synth.layers; ++l) {
    const auto [nb, rb] = massive_fp64(before, params.synth, l);
    const auto [na, ra] = massive_fp64(after, params.synth, l);
    CHECK(static_cast<int64_t>(r.before.layers[static_cast<size_t>(l)].massive.size()) == nb);
    CHECK(static_cast<int64_t>(r.after.layers[static_cast<size_t>(l)].massive.size()) == na);
    CHECK(r.before.layers[static_cast<size_t>(l)].max_ratio == Approx(rb).epsilon(1e-6));
    CHECK(r.after.layers[static_cast<size_t>(l)].max_ratio == Approx(ra).epsilon(1e-6));
  }
  // se1 feeds layer 1 alone and 56% of layers 2-3 (peaks 2400 vs 1920): layer 1 loses its
  // massive tokens, layers 2-3 keep them at 44%, and the sinks' attention mass drops.
  CHECK(r.after.layers[1].massive.empty());
  CHECK(r.after.layers[2].massive.size() == 2);
  CHECK(r.after.sink_mass < r.before.sink_mass);
}

TEST_CASE("pruning study: a control expert leaves every activation bit-identical",
          "[pruning]") {
  const kvq::PruningResult r = kvq::run_pruning(defaults(), "control");
  REQUIRE(r.experts.size() == 1);
  CHECK_FALSE(r.super_expert);
  CHECK(r.activations_identical);
  CHECK(r.after.massive == r.before.massive);
  CHECK(r.after.max_ratio == r.before.max_ratio);
  CHECK(r.after.sink_scores == r.before.sink_scores);
  // The control processes sink token 0 in the first Super Expert's layer.
  const kvq::SynthRecording rec = kvq::synthesize(kvq::SynthParams{});
  const int32_t* ids = tensor(rec, lname(r.experts[0].first, "experts.ids")).data<int32_t>();
  CHECK(std::find(ids, ids + 4, r.experts[0].second) != ids + 4);
}

TEST_CASE("pruning study: bad targets and pruned experts are errors naming them", "[pruning]") {
  CHECK_THROWS_WITH(kvq::run_pruning(defaults(), "se3"), Contains("2 planted Super Experts"));
  CHECK_THROWS_WITH(kvq::run_pruning(defaults(), "expert7"), Contains("'expert7'"));
  kvq::SynthParams p;
  p.pruned_experts = {{4, 0}};
  CHECK_THROWS_WITH(kvq::synthesize(p), Contains("pruned expert (4, 0)"));
  p.pruned_experts = {{0, 128}};
  CHECK_THROWS_WITH(kvq::synthesize(p), Contains("pruned expert (0, 128)"));
  kvq::PruningParams dense;
  dense.synth.experts = 0;
  CHECK_THROWS_WITH(kvq::run_pruning(dense, "se1"), Contains("experts >= 1"));
}

TEST_CASE("pruning study: kvq run stores the before/after measurements of each target",
          "[pruning][cli]") {
  const kvq::testing::ScenarioRun run =
      kvq::testing::run_scenario("pruning",
                                 "[[case]]\nname = \"prune\"\nop = \"expert_pruning\"\n"
                                 "prune = [\"se1\", \"control\"]\n");
  INFO(run.result.err);
  REQUIRE(run.result.status == 0);
  std::vector<std::string> rows;
  for (const kvq::testing::StoredMeasurement& m : kvq::testing::stored_measurements(
           run.db, {"massive_before", "massive_after", "activations_identical"},
           "c.name, m.metric"))
    rows.push_back(m.case_name + " " + m.metric + " " + std::to_string(static_cast<int>(m.value)));
  CHECK(rows == std::vector<std::string>{
                    // case names: prefix, then the study key and its value (scenario.cpp)
                    "prune/prunecontrol activations_identical 1",
                    "prune/prunecontrol massive_after 6", "prune/prunecontrol massive_before 6",
                    "prune/prunese1 activations_identical 0", "prune/prunese1 massive_after 4",
                    "prune/prunese1 massive_before 6"});
  fs::remove_all(run.dir);
}
