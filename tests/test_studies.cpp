// `kvq sinks` and `kvq experts` studies, scored against the ground truth that harness/synth
// plants (taken from synthesize()'s SynthGroundTruth, not from the file's metadata), plus what
// must hold on the real tiny-moe recording (data/tiny-moe.safetensors).
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness/cli/cli.h"
#include "harness/studies/experts.h"
#include "harness/io/safetensors.h"
#include "harness/studies/sinks.h"
#include "harness/store/store.h"
#include "harness/recording/synth.h"
#include "data_file.h"
#include "verify/metrics.h"
#include "tests/scratch.h"

namespace fs = std::filesystem;

namespace {

std::string temp_path(const std::string& name) {
  const fs::path dir =
      kvq::testing::scratch_root("studies");
  fs::create_directories(dir);
  return (dir / name).string();
}

// The default synthetic recording (4 layers, 256 tokens, 128 experts) and its planted truth.
struct Synthetic {
  std::string path;
  kvq::SynthGroundTruth truth;
};
const Synthetic& synthetic() {
  static const Synthetic s = [] {
    const kvq::SynthRecording rec = kvq::synthesize(kvq::SynthParams{});
    Synthetic out{temp_path("synth.safetensors"), rec.truth};
    kvq::write_recording(out.path, rec);
    return out;
  }();
  return s;
}

const kvq::SinkPredictor& predictor(const kvq::SinkStudy& s, const std::string& name) {
  for (const kvq::SinkPredictor& p : s.predictors)
    if (p.name == name) return p;
  throw std::runtime_error("the sink study has no predictor " + name);
}

std::vector<int64_t> all_predicted(const kvq::SinkPredictor& p) {
  std::vector<int64_t> v = p.tokens;
  v.insert(v.end(), p.unscored.begin(), p.unscored.end());
  return v;
}

int run_cli(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return kvq::cli_main(static_cast<int>(argv.size()), argv.data());
}

void require_sorted_by_max_abs(const std::vector<kvq::SuperExpert>& list) {
  for (size_t i = 0; i < list.size(); ++i) {
    CHECK(list[i].rank == static_cast<int32_t>(i + 1));
    if (i > 0) CHECK(list[i - 1].max_abs >= list[i].max_abs);
  }
}

void require_json_fields(const std::string& text, const std::vector<kvq::SuperExpert>& list) {
  const nlohmann::json j = nlohmann::json::parse(text);
  REQUIRE(j.is_array());
  REQUIRE(j.size() == list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    for (const char* key : {"rank", "layer", "expert", "max_abs", "token", "channel"})
      REQUIRE(j[i].contains(key));
    CHECK(j[i]["layer"].get<int>() == list[i].layer);
    CHECK(j[i]["expert"].get<int>() == list[i].expert);
    CHECK(j[i]["max_abs"].get<float>() == list[i].max_abs);
  }
}

}  // namespace

TEST_CASE("experts study: Super Experts of a synthetic recording are exactly the planted ones") {
  const Synthetic& syn = synthetic();
  REQUIRE_FALSE(syn.truth.super_experts.empty());
  const kvq::ExpertStudy s = kvq::run_expert_study(kvq::SafetensorsFile::open(syn.path));
  std::vector<kvq::LayerExpert> got;
  for (const kvq::SuperExpert& se : s.super_experts) got.emplace_back(se.layer, se.expert);
  const std::vector<kvq::LayerExpert> planted(syn.truth.super_experts.begin(),
                                              syn.truth.super_experts.end());
  const auto c = kvq::compare_sets(planted, got);
  CHECK(c.recall == 1.0);
  CHECK(c.precision == 1.0);
  // The plant lists them by m descending, as docs/spec.md §5 orders its output.
  CHECK(got == planted);
  require_sorted_by_max_abs(s.super_experts);
  // P99.5 and floor(max / 10) separate the planted peaks from every other expert.
  for (const kvq::SuperExpert& se : s.super_experts) {
    CHECK(se.max_abs > s.p99_5);
    CHECK(se.max_abs > s.threshold);
  }
  REQUIRE(s.vs_planted.has_value());  // the metadata copy of the plant reads back the same
  CHECK(s.vs_planted->exact());
  CHECK(s.considered_values == 3 * 128);  // round(0.75 * 4) layers x 128 experts
}

TEST_CASE("experts study: residual report finds the planted massive tokens from their layer on") {
  const Synthetic& syn = synthetic();
  const kvq::ExpertStudy s = kvq::run_expert_study(kvq::SafetensorsFile::open(syn.path));
  REQUIRE(s.residual.size() == 4);
  for (const kvq::ResidualLayer& layer : s.residual) {
    std::vector<int64_t> massive;
    for (const kvq::ResidualToken& t : layer.tokens) {
      if (t.massive) massive.push_back(t.token);
      CHECK(t.ratio == Approx(static_cast<double>(t.absmax) / layer.median));
    }
    std::sort(massive.begin(), massive.end());
    if (layer.layer >= syn.truth.massive_layer)
      CHECK(massive == syn.truth.massive_tokens);
    else
      CHECK(massive.empty());
  }
}

TEST_CASE("experts study: JSON output parses, lists the Super Experts with their fields") {
  const kvq::ExpertStudy s = kvq::run_expert_study(kvq::SafetensorsFile::open(synthetic().path));
  std::ostringstream out, summary;
  kvq::print_expert_study(out, &summary, s, "json");
  require_json_fields(out.str(), s.super_experts);
  CHECK(summary.str().find("P99.5") != std::string::npos);
}

TEST_CASE("sinks study: KVSink recalls the planted sinks; PFN(1) misses the non-initial one") {
  const Synthetic& syn = synthetic();
  const kvq::SinkStudy s = kvq::run_sink_study(kvq::SafetensorsFile::open(syn.path));
  const std::vector<int64_t>& planted = syn.truth.sink_tokens;
  REQUIRE(std::any_of(planted.begin(), planted.end(), [](int64_t t) { return t > 0; }));

  const kvq::SinkPredictor& kv = predictor(s, "kvsink");
  CHECK(kvq::compare_sets(planted, all_predicted(kv)).recall >= 0.95);

  const kvq::SinkPredictor& pfn1 = predictor(s, "pfn1");
  CHECK(pfn1.tokens == std::vector<int64_t>{0});
  CHECK(kvq::compare_sets(planted, all_predicted(pfn1)).recall < 1.0);
  // The attention-mass ground truth sees the planted non-initial sink too, so PFN(1) misses it
  // there as well.
  const std::vector<int64_t> truth(s.truth.sinks.begin(), s.truth.sinks.end());
  CHECK(kvq::compare_sets(planted, truth).recall == 1.0);
  CHECK(pfn1.vs_truth.recall < 1.0);
  CHECK_FALSE(pfn1.vs_truth.missed.empty());
  // Every predictor's comparison with the plant comes from the metadata copy of it.
  for (const kvq::SinkPredictor& p : s.predictors) REQUIRE(p.vs_planted.has_value());
}

TEST_CASE("sinks: the CLI writes one case per predictor with precision and recall to SQLite") {
  const std::string db = temp_path("sinks.db");
  fs::remove(db);
  REQUIRE(run_cli({"kvq", "sinks", synthetic().path, "--format", "csv", "--db", db, "--pfn",
                   "1,4,1"}) == 0);
  kvq::Store store(db);
  const kvq::QueryResult cases =
      kvq::run_query(store.handle(), "SELECT name FROM cases ORDER BY name");
  // pfn1, pfn4 (the repeated 1 collapses), massive, pivot, pivot+massive, kvsink.
  CHECK(cases.rows.size() == 6);
  const kvq::QueryResult m = kvq::run_query(
      store.handle(),
      "SELECT metric, COUNT(*) FROM measurements WHERE metric IN ('precision', 'recall') "
      "GROUP BY metric ORDER BY metric");
  REQUIRE(m.rows.size() == 2);
  CHECK(m.rows[0][1] == "6");
  CHECK(m.rows[1][1] == "6");
  CHECK(run_cli({"kvq", "sinks", synthetic().path, "--pfn", "1,x"}) == 2);
}

TEST_CASE("experts: the CLI rejects a dense recording with an error naming the file") {
  kvq::SynthParams p;
  p.experts = 0;
  const std::string path = temp_path("dense.safetensors");
  kvq::write_recording(path, kvq::synthesize(p));
  CHECK_THROWS_WITH(kvq::run_expert_study(kvq::SafetensorsFile::open(path)),
                    Catch::Matchers::Contains(path) &&
                        Catch::Matchers::Contains("experts.ids"));
  CHECK(run_cli({"kvq", "experts", path}) == 2);
}

// --- real recording (skips the binary when absent: keep these last) ---

TEST_CASE("experts study on tiny-moe: finite statistics, a Super Expert, sorted by max_abs") {
  const auto path = kvq::testing::data_file("tiny-moe.safetensors");
  const kvq::ExpertStudy s = kvq::run_expert_study(kvq::SafetensorsFile::open(path.string()));
  CHECK_FALSE(s.has_argmax);  // the recording has no experts.down_argmax
  for (const auto& layer : s.stats)
    for (const kvq::ExpertStat& st : layer) {
      CHECK(std::isfinite(st.max_abs));
      CHECK(st.max_abs >= 0.0f);
    }
  CHECK(std::isfinite(s.p99_5));
  REQUIRE_FALSE(s.super_experts.empty());
  require_sorted_by_max_abs(s.super_experts);
  for (const kvq::SuperExpert& se : s.super_experts) CHECK(se.channel == -1);
  std::ostringstream out;
  kvq::print_expert_study(out, nullptr, s, "json");
  require_json_fields(out.str(), s.super_experts);
}

TEST_CASE("sinks study on tiny-moe: finite scores over T - 63 tokens, PFN(1) is token 0") {
  const auto path = kvq::testing::data_file("tiny-moe.safetensors");
  const kvq::SinkStudy s = kvq::run_sink_study(kvq::SafetensorsFile::open(path.string()));
  CHECK(s.truth.score.size() == static_cast<size_t>(s.tokens - 63));
  for (double v : s.truth.score) {
    CHECK(std::isfinite(v));
    CHECK(v >= 0.0);
  }
  CHECK(predictor(s, "pfn1").tokens == std::vector<int64_t>{0});
  CHECK_FALSE(s.planted.has_value());
}
