// Study ops as scenario ops (harness/studies/studies.h): the score KL on hand-made examples, the scenario
// loader's handling of study keys and input = "model", the recording cache, and the three study
// scenarios (scenarios/{experts,sinks,accuracy}.toml) run through `kvq run --db` and checked
// from their SQLite rows against the planted ground truth and exact properties. The scenarios
// read data/ (stories260K, tiny-moe).
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "harness/io/safetensors.h"
#include "harness/recording/case_recording.h"
#include "harness/recording/synth.h"
#include "harness/run/runner.h"
#include "harness/scenario/scenario.h"
#include "harness/store/store.h"
#include "harness/studies/memory.h"
#include "harness/studies/method.h"
#include "harness/studies/sinks.h"
#include "harness/studies/vlm.h"
#include "harness/studies/studies.h"
#include "kvq_process.h"
#include "reference/error.h"
#include "data_file.h"
#include "tests/scratch.h"

#include <toml++/toml.h>

namespace fs = std::filesystem;

namespace {

// KVQ_CACHE as the test run gave it (tests/meson.build: a folder in the build tree, not the
// temporary folder), put back after a case that points it at a folder of its own.
const std::string kRunCache = std::getenv("KVQ_CACHE") ? std::getenv("KVQ_CACHE") : "";
void restore_cache_env() {
  if (kRunCache.empty())
    ::unsetenv("KVQ_CACHE");
  else
    ::setenv("KVQ_CACHE", kRunCache.c_str(), 1);
}

fs::path temp_dir(const std::string& name) {
  const fs::path dir =
      kvq::testing::scratch_root("study_ops") / name;
  fs::create_directories(dir);
  return dir;
}

std::string write_file(const fs::path& path, const std::string& text) {
  std::ofstream(path) << text;
  return path.string();
}

std::string load_error(const std::string& name, const std::string& toml) {
  const std::string path = write_file(temp_dir("load") / (name + ".toml"), toml);
  try {
    kvq::load_scenario(path);
  } catch (const kvq::Error& e) {
    return e.what();
  }
  return "";
}

// metric -> value of one case of the latest run in `db`.
std::map<std::string, double> metrics(const std::string& db, const std::string& case_name) {
  kvq::Store store(db);
  const kvq::QueryResult r = kvq::run_query(
      store.handle(),
      "SELECT m.metric, m.value FROM measurements m JOIN cases c ON c.id = m.case_id "
      "WHERE c.run_id = (SELECT max(id) FROM runs) AND c.name = '" +
          case_name + "'");
  std::map<std::string, double> out;
  for (const auto& row : r.rows) out[row[0]] = row[1].empty() ? NAN : std::stod(row[1]);
  return out;
}

std::string scalar(const std::string& db, const std::string& sql) {
  kvq::Store store(db);
  const kvq::QueryResult r = kvq::run_query(store.handle(), sql);
  return r.rows.empty() || r.rows[0].empty() ? "" : r.rows[0][0];
}

// Every case name of `db`, in insertion order.
std::vector<std::string> case_names(const std::string& db) {
  kvq::Store store(db);
  std::vector<std::string> out;
  for (const auto& row : kvq::run_query(store.handle(), "SELECT name FROM cases ORDER BY id").rows)
    out.push_back(row[0]);
  return out;
}

// `kvq run SCENARIO --db DB` with the recording cache in a fresh folder of this test.
std::string run_scenario_file(const std::string& scenario) {
  const fs::path dir = temp_dir(scenario);
  ::setenv("KVQ_CACHE", (dir / "cache").c_str(), 1);
  const std::string db = (dir / "results.db").string();
  const char* root = std::getenv("KVQ_SOURCE_ROOT");
  REQUIRE(root != nullptr);  // set by meson test
  // A scenario "DIR/NAME" is a temp_dir one (synthetic_part), else scenarios/NAME.toml.
  const fs::path file = scenario.find('/') == std::string::npos
                            ? fs::path(root) / "scenarios" / (scenario + ".toml")
                            : temp_dir("") / (scenario + ".toml");
  const kvq::testing::KvqResult r = kvq::testing::run_kvq({"run", file.string(), "--db", db}, dir);
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  REQUIRE(scalar(db, "SELECT status FROM runs ORDER BY id DESC LIMIT 1") == "complete");
  REQUIRE(scalar(db, "SELECT count(*) FROM checks") == "0");  // no study failed
  return db;
}

// The cases of scenarios/SCENARIO.toml that need no file (input = "synthetic"), written as a
// scenario of their own, checked on their own as well.
std::string synthetic_part(const std::string& scenario) {
  const char* root = std::getenv("KVQ_SOURCE_ROOT");
  REQUIRE(root != nullptr);  // set by meson test
  toml::table file =
      toml::parse_file((fs::path(root) / "scenarios" / (scenario + ".toml")).string());
  toml::array synthetic;
  REQUIRE(file["case"].as_array() != nullptr);
  for (const toml::node& c : *file["case"].as_array()) {
    const toml::table* t = c.as_table();
    REQUIRE(t != nullptr);
    const toml::node* input = t->get("input");
    if (!t->contains("model") && (!input || input->value_or(std::string()) == "synthetic"))
      synthetic.push_back(*t);
  }
  REQUIRE(!synthetic.empty());
  file.insert_or_assign("case", synthetic);
  std::ostringstream text;
  text << file;
  write_file(temp_dir(scenario + "-synthetic") / (scenario + ".toml"), text.str());
  return scenario + "-synthetic/" + scenario;
}

// The planted-sink checks of the synthetic cases of scenarios/sinks.toml (issue 7: KVSink recall
// >= 0.95, PFN recall < 1 where a non-initial sink is planted).
void check_synthetic_sinks(const std::string& db) {
  for (const char* name : {"sinks/synthetic/pfn1", "sinks/synthetic/pfn4"}) {
    INFO(name);
    const auto m = metrics(db, name);
    CHECK(m.at("kvsink.recall") >= 0.95);
    CHECK(m.at("kvsink.planted_recall") >= 0.95);
    CHECK(m.at("truth.planted_recall") == 1.0);  // the planted sinks do draw the attention
  }
  const auto pfn1 = metrics(db, "sinks/synthetic/pfn1");
  CHECK(pfn1.at("pfn1.recall") < 1.0);
  CHECK(pfn1.at("pfn1.planted_recall") < 1.0);
  CHECK(pfn1.at("pfn1.predicted") == 1.0);
  const auto pfn4 = metrics(db, "sinks/synthetic/pfn4");
  CHECK(pfn4.at("pfn4.planted_recall") < 1.0);  // the planted sink at token 5 lies beyond 0..3
  // The missed token is named in the case's stored result.
  const std::string missed =
      scalar(db,
             "SELECT json_extract(params_json, '$.result.predictors.pfn1.planted_missed') FROM "
             "cases WHERE name = 'sinks/synthetic/pfn1' ORDER BY id DESC LIMIT 1");
  CHECK(missed == "[5]");
}

}  // namespace

TEST_CASE("score_kl: one head, two keys: KL(P || Q) equals the closed form") {
  // d = 1, q = 1: scores are the keys. k_exact = [0, a] gives P = [1, e^a] / (1 + e^a);
  // k_method = [0, 0] gives Q = [1/2, 1/2]; KL = sum_j P_j ln(2 P_j).
  const float a = 1.5f;
  const std::vector<float> q = {1.0f}, exact = {0.0f, a}, method = {0.0f, 0.0f};
  const double e = std::exp(static_cast<double>(a));
  const double p0 = 1.0 / (1.0 + e), p1 = e / (1.0 + e);
  const double want = p0 * std::log(2.0 * p0) + p1 * std::log(2.0 * p1);
  const double got = kvq::attention_score_kl(q, 1, kvq::KvShape{2, 1, 1}, exact, method);
  CHECK(got == Approx(want).epsilon(1e-12));
  CHECK(got > 0.0);
}

TEST_CASE("score_kl: same keys give 0 exactly; a zero query head counts 0 in the head mean") {
  // d = 4: s_j = q . k_j / 2. Two query heads share one KV head (grouped-query); head 1's query
  // is zero, so both of its distributions are uniform and its KL is 0: the mean is half head 0's.
  const std::vector<float> k_exact = {1, 0, 0, 0, 0, 2, 0, 0, 0, 0, -1, 0};
  const std::vector<float> k_method = {0, 0, 0, 0, 0, 2, 0, 0, 0, 0, -1, 0};
  const std::vector<float> q = {2, 2, 2, 0, 0, 0, 0, 0};
  const kvq::KvShape shape{3, 1, 4};
  CHECK(kvq::attention_score_kl(q, 2, shape, k_exact, k_exact) == 0.0);
  // Head 0: s_exact = [1, 2, -1], s_method = [0, 2, -1].
  const auto softmax = [](std::vector<double> s) {
    double z = 0;
    for (double v : s) z += std::exp(v);
    for (double& v : s) v = std::exp(v) / z;
    return s;
  };
  const std::vector<double> p = softmax({1, 2, -1}), r = softmax({0, 2, -1});
  double kl = 0;
  for (int j = 0; j < 3; ++j) kl += p[j] * std::log(p[j] / r[j]);
  CHECK(kvq::attention_score_kl(q, 2, shape, k_exact, k_method) == Approx(kl / 2).epsilon(1e-12));
  CHECK_THROWS_AS(kvq::attention_score_kl(q, 3, shape, k_exact, k_method), kvq::Error);
}

TEST_CASE("studies: the table lists method, sinks and experts; unknown ops are not studies") {
  REQUIRE(kvq::find_study_op("method") != nullptr);
  REQUIRE(kvq::find_study_op("sinks") != nullptr);
  REQUIRE(kvq::find_study_op("experts") != nullptr);
  CHECK(kvq::find_study_op("quantize") == nullptr);
  CHECK(kvq::find_study_op("") == nullptr);
}

TEST_CASE("scenario: study keys are typed, named in case names, and belong to their op") {
  const fs::path dir = temp_dir("keys");
  const std::string path = write_file(dir / "sinks.toml", R"([[case]]
op = "sinks"
pfn = [1, 4]
tau_mass = 3.5
)");
  const kvq::Scenario s = kvq::load_scenario(path);
  REQUIRE(s.cases.size() == 2);
  CHECK(s.cases[0].name == "sinks/pfn1");
  CHECK(s.cases[1].name == "sinks/pfn4");
  CHECK(kvq::case_keys<kvq::SinksCase>(s.cases[0]).tau_mass == 3.5);
  CHECK(kvq::case_keys<kvq::SinksCase>(s.cases[1]).pfn == 4);
  CHECK(kvq::case_keys<kvq::SinksCase>(s.cases[0]).tau_k == kvq::KvSinkParams{}.tau_k);

  const std::string wrong_type = load_error("type", "[[case]]\nop = \"sinks\"\npfn = 1.5\n");
  CHECK(wrong_type.find("type.toml:3:") != std::string::npos);
  CHECK(wrong_type.find("key 'pfn': expected an integer") != std::string::npos);
  const std::string wrong_op =
      load_error("wrongop", "[[case]]\nop = \"experts\"\ntau_mass = 5.0\n");
  CHECK(wrong_op.find("wrongop.toml:3:") != std::string::npos);
  CHECK(wrong_op.find("key 'tau_mass': applies to op ") != std::string::npos);
  CHECK(wrong_op.find("sinks") != std::string::npos);
  CHECK(wrong_op.find("this case's op is 'experts'") != std::string::npos);
  const std::string backend_op = load_error("backendop", "[[case]]\nop = \"quantize\"\npfn = 1\n");
  CHECK(backend_op.find("key 'pfn'") != std::string::npos);
}

TEST_CASE("scenario: input = model needs its keys; a missing model file is a FILE:LINE error") {
  const std::string missing = load_error("missing", R"([[case]]
op = "sinks"
input = "model"
model = "no-such-model.bin"
)");
  CHECK(missing.find("missing.toml:4:") != std::string::npos);
  CHECK(missing.find("key 'model': file") != std::string::npos);
  CHECK(missing.find("no-such-model.bin' not found") != std::string::npos);
  const std::string no_keys = load_error("nokeys", "[[case]]\nop = \"sinks\"\ninput = \"model\"\n");
  CHECK(no_keys.find("nokeys.toml:") != std::string::npos);
  CHECK(no_keys.find("needs keys model, tokenizer and text") != std::string::npos);
  const std::string not_study =
      load_error("notstudy", "[[case]]\nop = \"experts\"\ninput = \"model\"\n");
  CHECK(not_study.find("key 'input'") != std::string::npos);
}

TEST_CASE("case_recording: a synthetic case is synthesized once into the cache, per key set") {
  const fs::path cache = temp_dir("cache-synth");
  ::setenv("KVQ_CACHE", cache.c_str(), 1);
  kvq::ScenarioCase c;
  c.where = "test:1";
  kvq::SinksCase k;
  k.seed = 3;
  k.tokens = 96;
  k.experts = 0;
  const std::string first = kvq::case_recording(c, k);
  CHECK(fs::path(first).parent_path() == cache);
  const auto written = fs::last_write_time(first);
  CHECK(kvq::case_recording(c, k) == first);  // the second case reads the cached file
  CHECK(fs::last_write_time(first) == written);
  // Its content is synthesize() of the same parameters (planted truth in the metadata).
  kvq::SynthParams p;
  p.seed = 3;
  p.tokens = 96;
  p.experts = 0;
  const kvq::SynthRecording want = kvq::synthesize(p);
  const kvq::SafetensorsFile file = kvq::SafetensorsFile::open(first);
  CHECK(file.metadata().at("sink_tokens") == want.metadata.at("sink_tokens"));
  for (const auto& [name, tensor] : want.tensors)
    if (name == "layers.2.k") CHECK(file.read_f32(name) == kvq::widen_f32(tensor.view(), name));
  k.seed = 4;
  CHECK(kvq::case_recording(c, k) != first);
  kvq::ScenarioCase file_case;
  file_case.input = first;
  CHECK(kvq::case_recording(file_case, k) == first);  // a recording path is used as it is
  restore_cache_env();
}

TEST_CASE("runner: a study that throws is an error check of ref naming the case; others run") {
  const fs::path dir = temp_dir("error");
  ::setenv("KVQ_CACHE", (dir / "cache").c_str(), 1);
  // A dense recording (experts = 0) has no expert tensors: the experts study throws.
  kvq::SynthParams dense;
  dense.experts = 0;
  dense.tokens = 96;
  kvq::write_recording((dir / "dense.safetensors").string(), kvq::synthesize(dense));
  const std::string path = write_file(dir / "dense.toml", R"([scenario]
backends = ["ref"]

[[case]]
name = "dense"
op = "experts"
input = "dense.safetensors"

[[case]]
name = "fp32"
op = "method"
method = "fp32"
tokens = 96
)");
  kvq::RunOptions options;
  options.db = (dir / "results.db").string();
  const kvq::RunSummary summary = kvq::run_scenario(kvq::load_scenario(path), options);
  CHECK(summary.cases == 2);
  CHECK(summary.failed == 1);
  CHECK(summary.measured == 1);
  REQUIRE(summary.failures.size() == 1);
  CHECK(summary.failures[0].case_name == "dense");
  CHECK(summary.failures[0].where == "error");
  CHECK(summary.failures[0].got.find("dense.toml:") != std::string::npos);
  CHECK(scalar(options.db, "SELECT status FROM checks") == "error");
  CHECK(scalar(options.db, "SELECT status FROM runs") == "complete");
  restore_cache_env();
}

TEST_CASE("experts scenario, synthetic cases: every planted Super Expert and no other") {
  const std::string db = run_scenario_file(synthetic_part("experts"));
  const auto synth = metrics(db, "experts/synthetic");
  CHECK(synth.at("planted_recall") == 1.0);
  CHECK(synth.at("planted_precision") == 1.0);
  CHECK(synth.at("super_experts") >= 1.0);
  // One se.L<l>.E<e>.max_abs per Super Expert, each above the selection threshold.
  int se = 0;
  for (const auto& [metric, value] : synth)
    if (metric.rfind("se.L", 0) == 0) {
      ++se;
      CHECK(value > synth.at("threshold"));
      CHECK(value > synth.at("p99_5"));
    }
  CHECK(se == static_cast<int>(synth.at("super_experts")));
}

TEST_CASE("sinks scenario, synthetic cases: KVSink recalls the planted sinks, PFN1 misses one") {
  const std::string db = run_scenario_file(synthetic_part("sinks"));
  // pfn = [1, 4] sweeps the one synthetic case into two; nothing else of the file ran.
  CHECK(scalar(db, "SELECT group_concat(name, ' ') FROM (SELECT name FROM cases ORDER BY name)") ==
        "sinks/synthetic/pfn1 sinks/synthetic/pfn4");
  check_synthetic_sinks(db);
}

TEST_CASE("memory scenario: fp16 and quantized batches follow the budget over bytes per token") {
  const std::string db = run_scenario_file(synthetic_part("memory"));
  // LLaMA-2-13B of scenarios/memory.toml: 40 layers x 40 KV heads x 128, K and V, fp16.
  const double fp16_token = 2.0 * 2.0 * 40 * 40 * 128;
  const double free_bytes = (80.0 - 24.2) * 1073741824.0;
  const std::vector<std::string> names = case_names(db);
  for (const std::string& name : names) {
    INFO(name);
    const auto m = metrics(db, name);
    const double context = std::stod(name.substr(name.rfind("context") + 7));
    CHECK(m.at("fp16_bytes_per_token") == fp16_token);
    CHECK(m.at("fp16_max_batch") == std::floor(free_bytes / (fp16_token * context)));
    CHECK(m.at("max_batch") == std::floor(free_bytes / (m.at("bytes_per_token") * context)));
    CHECK(m.at("bytes_per_token") ==
          Approx(m.at("bits_per_element") / 8.0 * 2 * 40 * 40 * 128).epsilon(1e-12));
    CHECK(m.at("max_batch") >= m.at("fp16_max_batch"));
  }
  CHECK(names.size() == 6 * 2 * 3);  // methods x bits x contexts
}

TEST_CASE("vlm scenario: equal code bits, and spec's allocation meets the uniform width above") {
  const std::string db = run_scenario_file(synthetic_part("vlm"));
  const std::vector<std::string> names = case_names(db);
  for (const std::string& name : names) {
    INFO(name);
    const auto m = metrics(db, name);
    const double bits = std::stod(name.substr(name.rfind("/b") + 2));
    CHECK(m.at("avg_bits") == bits);
    CHECK(m.at("uniform_avg_bits") == bits);
    CHECK(m.at("spec_avg_bits") > bits);
    int above = 0;  // the smallest width >= spec's average, by hand
    for (int b : {1, 2, 3, 4, 8})
      if (above == 0 && b >= m.at("spec_avg_bits")) above = b;
    CHECK(m.at("uniform_above_bits") == above);
    CHECK(m.at("spec_beats_uniform_above") ==
          (m.at("spec_attention_rel_error") < m.at("uniform_above_attention_rel_error") ? 1.0 : 0.0));
    for (const char* e : {"akvq_attention_rel_error", "uniform_attention_rel_error",
                          "spec_attention_rel_error", "uniform_above_attention_rel_error"})
      CHECK((std::isfinite(m.at(e)) && m.at(e) > 0.0));
  }
  CHECK(names.size() == 2 * 2 * 3);  // image mixes x text_attention x bits
}

// --- the whole scenario files (they read data/) ---

TEST_CASE("experts scenario: tiny-moe lists its Super Expert, no planted set") {
  kvq::testing::data_file("tiny-moe.safetensors");
  const std::string db = run_scenario_file("experts");
  const auto moe = metrics(db, "experts/tiny-moe");
  CHECK(moe.at("super_experts") >= 1.0);
  CHECK(moe.count("planted_recall") == 0);  // a real recording plants nothing
  for (const auto& [metric, value] : moe) CHECK(std::isfinite(value));
}

TEST_CASE("sinks scenario: stories260K sinks and kvsink+kvquant vs kvquant perplexity") {
  kvq::testing::data_file("stories260K.bin");
  const std::string db = run_scenario_file("sinks");
  check_synthetic_sinks(db);
  for (const char* name :
       {"sinks/stories260K/pfn1", "sinks/ppl/kvquant/b2", "sinks/ppl/kvsink+kvquant/b3"}) {
    INFO(name);
    const auto m = metrics(db, name);
    CHECK(!m.empty());
    for (const auto& [metric, value] : m) CHECK(std::isfinite(value));
  }
  // kvsink+kvquant vs kvquant perplexity at 2 and 3 bits: both measured against one baseline.
  CHECK(metrics(db, "sinks/ppl/kvquant/b2").at("ppl_fp32") ==
        metrics(db, "sinks/ppl/kvsink+kvquant/b2").at("ppl_fp32"));
}

TEST_CASE("accuracy scenario: every row finite; fp32 exact; 4 bits beat 2 bits per method") {
  kvq::testing::data_file("stories260K.bin");
  const std::string db = run_scenario_file("accuracy");
  CHECK(scalar(db, "SELECT count(*) FROM cases WHERE run_id = (SELECT max(id) FROM runs)") == "38");
  CHECK(scalar(db, "SELECT count(*) FROM measurements WHERE value IS NULL OR value != value") ==
        "0");
  for (const char* input : {"synthetic", "stories260K"}) {
    INFO(input);
    const auto fp32 = metrics(db, std::string("accuracy/") + input + "/fp32");
    CHECK(fp32.at("kv_nmse") == 0.0);
    CHECK(fp32.at("attention_rel_error") == 0.0);
    CHECK(fp32.at("attention_rel_l2") == 0.0);
    CHECK(fp32.at("score_kl") == 0.0);
    CHECK(fp32.at("bits_per_element") == 32.0);
    for (const char* method : {"rtn", "kivi", "kvquant", "rotatekv", "kvsink+kvquant", "akvq-vl"}) {
      INFO(method);
      const std::string base = std::string("accuracy/") + input + "/" + method + "/b";
      const auto b2 = metrics(db, base + "2"), b4 = metrics(db, base + "4");
      for (const auto& [metric, value] : b2) CHECK(std::isfinite(value));
      CHECK(b4.at("kv_nmse") < b2.at("kv_nmse"));
      CHECK(b2.at("score_kl") > 0.0);
      CHECK(b4.at("bits_per_element") > b2.at("bits_per_element"));
    }
  }
  const auto model_fp32 = metrics(db, "accuracy/stories260K/fp32");
  CHECK(model_fp32.at("ppl") == model_fp32.at("ppl_fp32"));
  CHECK(model_fp32.at("ppl") > 1.0);
  const auto rtn2 = metrics(db, "accuracy/stories260K/rtn/b2");
  CHECK(rtn2.at("ppl_fp32") == model_fp32.at("ppl"));
  CHECK(rtn2.at("ppl") > rtn2.at("ppl_fp32"));
}

TEST_CASE("study ops: the runner's table and the loader's op tables name the same studies") {
  std::vector<std::string> loader, runner;
  for (const kvq::OpKeys& op : kvq::op_keys())
    if (op.study) loader.push_back(op.op);
  for (const kvq::StudyOp& op : kvq::study_ops()) runner.push_back(op.op);
  CHECK(loader == runner);
}

TEST_CASE("study ops: the case structs' defaults are the study parameters' defaults") {
  // harness/scenario/ sits below recording/ and studies/, so its structs spell these defaults out.
  const kvq::SynthParams synth;
  const kvq::SinksCase sinks;
  CHECK(sinks.seed == static_cast<int64_t>(synth.seed));
  CHECK(sinks.layers == synth.layers);
  CHECK(sinks.tokens == synth.tokens);
  CHECK(sinks.heads == synth.kv_heads);
  CHECK(sinks.head_dim == synth.head_dim);
  CHECK(sinks.hidden == synth.hidden);
  CHECK(sinks.experts == synth.experts);
  CHECK(sinks.top_k == synth.top_k);
  CHECK(sinks.image_tokens == synth.image_tokens);
  CHECK(sinks.text_attention == synth.text_attention);
  CHECK(sinks.tau_mass == kvq::SinkStudyParams{}.tau_mass);
  const kvq::MemoryCase memory;
  const kvq::MemoryModel model;
  CHECK(memory.layers == model.layers);
  CHECK(memory.budget_gib == model.budget_gib);
  CHECK(memory.weights_gib == model.weights_gib);
  CHECK(memory.seed == static_cast<int64_t>(synth.seed));
  CHECK(memory.tokens == synth.tokens);
  CHECK(memory.hidden == synth.hidden);
  const kvq::VlmCase vlm;
  const kvq::VlmParams vp;
  CHECK(vlm.bits == vp.bits);
  CHECK(vlm.bits_hi == vp.bits_hi);
  CHECK(vlm.group == vp.group);
}
