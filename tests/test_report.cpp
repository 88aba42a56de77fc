// `kvq report`: the named queries (results/*.sql) on a database built here with Store, the run
// comparison (--compare) against deltas worked by hand, the papers' ordering verdict, run names
// (id, last, last~N) and the errors a user meets. cmd_report runs in-process with std::cout
// captured, so the CSV and JSON a user would read are parsed back.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "harness/cli/commands.h"
#include "harness/store/report_compare.h"
#include "harness/store/report_orderings.h"
#include "harness/store/report_runs.h"
#include "harness/store/store.h"
#include "reference/error.h"
#include "tests/scratch.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using Row = std::vector<std::string>;

namespace {

std::string fresh_db(const std::string& name) {
  const fs::path dir =
      kvq::testing::scratch_root("report") / name;
  fs::remove_all(dir);
  return (dir / "kvq.db").string();
}

kvq::RunInfo info(const std::string& scenario) {
  kvq::RunInfo i;
  i.scenario = scenario;
  i.scenario_hash = "0";
  i.command = "kvq run " + scenario;
  i.git_sha = "0123456789abcdef";
  i.host = "test";
  return i;
}

kvq::CaseRecord record(const std::string& name, const nlohmann::json& params = {}) {
  const std::string op = params.is_object() ? params.value("op", "quantize") : "quantize";
  return {name, op, params.is_null() ? "{}" : params.dump(), "kvq run s.toml"};
}

kvq::CheckRecord check(const std::string& status, int64_t first = -1, const std::string& e = "",
                       const std::string& g = "") {
  kvq::CheckRecord c;
  c.backend = "avx2";
  c.reference = "ref";
  c.status = status;
  c.mismatches = first >= 0 ? 1 : 0;
  c.first_mismatch = first;
  c.expected = e;
  c.got = g;
  return c;
}

kvq::Measurement measure(const std::string& backend, const std::string& metric, double v) {
  return {backend, metric, v, metric == "time" ? "s" : "ratio", 1, 0.0};
}

// Run 1 (A) and run 2 (B) with the changes the compare test expects, worked by hand:
//   q/b2  avx2 pass -> fail (new failure); avx2 time 1 -> 1.5 (delta 0.5, relative 0.5);
//         ref nmse 0 -> 0.25 (relative inf); ref time 2 -> 2 (unchanged, not listed)
//   q/b4  avx2 fail -> pass (fixed); ref kv_nmse 0.5 -> 0.5025 (relative 0.005, under 1%);
//         ref bits_per_element only in A
//   gone  only in A;  new  only in B, its check an error (new failure)
void two_runs(kvq::Store& s) {
  const int64_t a = s.begin_run(info("a.toml"));
  s.add_case(
      a, record("q/b2"), {check("pass")},
      {measure("ref", "time", 2.0), measure("avx2", "time", 1.0), measure("ref", "nmse", 0.0)});
  s.add_case(a, record("q/b4"), {check("fail", 5, "0x3f80", "0x3f81")},
             {measure("ref", "kv_nmse", 0.5), measure("ref", "bits_per_element", 2.25)});
  s.add_case(a, record("gone"), {check("pass")}, {});
  s.finish_run(a, "complete");
  const int64_t b = s.begin_run(info("b.toml"));
  s.add_case(
      b, record("q/b2"), {check("fail", 7, "1", "2")},
      {measure("ref", "time", 2.0), measure("avx2", "time", 1.5), measure("ref", "nmse", 0.25)});
  s.add_case(b, record("q/b4"), {check("pass")}, {measure("ref", "kv_nmse", 0.5025)});
  s.add_case(b, record("new"), {check("error", -1, "", "boom")}, {measure("ref", "time", 1.0)});
  s.finish_run(b, "failed");
}

// A run of op "method" cases as the runner stores them: op column = method, params with op,
// method and bits, measurements of backend "ref".
void method_run(kvq::Store& s) {
  const int64_t r = s.begin_run(info("accuracy.toml"));
  struct M {
    const char* method;
    int bits;
    double kv, attention, l2;
  };
  // 2 bits: kv_nmse and the L2 attention error in the papers' order; the max-norm attention error
  // not (kivi 0.12 > rtn 0.1). 4 bits: rotatekv not measured.
  const M rows[] = {{"rtn", 2, 0.1, 0.1, 0.3},
                    {"kivi", 2, 0.05, 0.12, 0.2},
                    {"rotatekv", 2, 0.01, 0.02, 0.1},
                    {"rtn", 4, 0.004, 0.003, 0.03},
                    {"kivi", 4, 0.002, 0.001, 0.02}};
  for (const M& m : rows) {
    const nlohmann::json params = {{"op", "method"}, {"method", m.method}, {"bits", m.bits}};
    kvq::CaseRecord c =
        record(std::string("acc/") + m.method + "/b" + std::to_string(m.bits), params);
    c.op = m.method;
    s.add_case(r, c, {},
               {measure("ref", "kv_nmse", m.kv), measure("ref", "attention_rel_error", m.attention),
                measure("ref", "attention_rel_l2", m.l2),
                measure("ref", "bits_per_element", m.bits + 0.25), measure("ref", "time", 0.1)});
  }
  s.finish_run(r, "complete");
}

// `kvq report ARGS...` in-process: its stdout, or the kvq::Error it threw.
struct Output {
  int status = 0;
  std::string out, error, err;  // err: what it wrote to std::cerr (notes)
};
Output report(const std::vector<std::string>& args) {
  std::vector<std::string> text = {"report"};
  text.insert(text.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& t : text) argv.push_back(t.data());
  std::ostringstream captured, captured_err;
  std::streambuf* old = std::cout.rdbuf(captured.rdbuf());
  std::streambuf* old_err = std::cerr.rdbuf(captured_err.rdbuf());
  Output o;
  try {
    o.status = kvq::cmd_report(static_cast<int>(argv.size()), argv.data());
  } catch (const kvq::Error& e) {
    o.status = 2;
    o.error = e.what();
  }
  std::cout.rdbuf(old);
  std::cerr.rdbuf(old_err);
  o.out = captured.str();
  o.err = captured_err.str();
  return o;
}

std::vector<Row> parse_csv(const std::string& text) {
  // The compare rows hold no quotes or line breaks, but notes may hold commas: RFC 4180 fields.
  std::vector<Row> rows;
  Row row;
  std::string field;
  bool quoted = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        field += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        field += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      row.push_back(field);
      field.clear();
    } else if (c == '\n') {
      row.push_back(field);
      field.clear();
      rows.push_back(row);
      row.clear();
    } else {
      field += c;
    }
  }
  return rows;
}

}  // namespace

TEST_CASE("report compare: new failures first, then fixed, then metric changes beyond 1%") {
  const std::string path = fresh_db("compare");
  kvq::Store store(path);
  two_runs(store);
  const kvq::RunComparison c = kvq::compare_runs(store.handle(), 1, 2, 0.01);
  const std::vector<Row> want = {
      {"new failure", "q/b2", "avx2", "check", "pass", "fail", "", "",
       "first mismatch [7]: expected 1, got 2"},
      {"new failure", "new", "avx2", "check", "", "error", "", "", "boom"},
      {"fixed", "q/b4", "avx2", "check", "fail", "pass", "", "",
       "was: first mismatch [5]: expected 0x3f80, got 0x3f81"},
      {"changed", "q/b2", "ref", "nmse", "0", "0.25", "0.25", "inf", ""},
      {"changed", "q/b2", "avx2", "time", "1", "1.5", "0.5", "0.5", ""},
      {"only in A", "q/b4", "ref", "bits_per_element", "2.25", "", "", "", ""},
      {"only in A", "gone", "", "", "", "", "", "", ""},
      {"only in B", "new", "", "", "", "", "", "", ""},
  };
  CHECK(c.rows.columns ==
        Row{"change", "case", "backend", "metric", "a", "b", "delta", "relative", "note"});
  CHECK(c.rows.rows == want);
  CHECK(c.new_failures == 2);
  CHECK(c.fixed == 1);
  CHECK(c.changed == 2);
  CHECK(c.compared == 4);  // q/b2: time ref, time avx2, nmse; q/b4: kv_nmse
  CHECK(c.cases_only_a == 1);
  CHECK(c.cases_only_b == 1);
  CHECK_THAT(kvq::comparison_summary(c), Contains("2 new failures, 1 fixed"));
}

TEST_CASE("report compare: a lower threshold lists the 0.5% change with its delta") {
  const std::string path = fresh_db("threshold");
  kvq::Store store(path);
  two_runs(store);
  const kvq::RunComparison c = kvq::compare_runs(store.handle(), 1, 2, 0.001);
  // 0.5025 - 0.5 = 0.0025; 0.0025 / 0.5 = 0.005, after the 0.5 and inf changes.
  REQUIRE(c.changed == 3);
  CHECK(c.rows.rows.at(5) ==
        Row{"changed", "q/b4", "ref", "kv_nmse", "0.5", "0.5025", "0.0025", "0.005", ""});
  CHECK(kvq::parse_threshold("5%") == Approx(0.05).epsilon(1e-15));
  CHECK(kvq::parse_threshold("0.2") == 0.2);
  CHECK_THROWS_WITH(kvq::parse_threshold("-1"), Contains("--threshold '-1'"));
  CHECK_THROWS_WITH(kvq::parse_threshold("5x"), Contains("percentage"));
}

TEST_CASE("report compare: csv and json from `kvq report --compare` parse back to the rows") {
  const std::string path = fresh_db("compare-cli");
  {
    kvq::Store store(path);
    two_runs(store);
  }
  const Output csv = report({"--compare", "last~1", "last", "--db", path, "--format", "csv"});
  REQUIRE(csv.status == 0);
  const std::vector<Row> rows = parse_csv(csv.out);
  REQUIRE(rows.size() == 9);  // header + 8
  CHECK(rows[0].at(0) == "change");
  for (const Row& r : rows) CHECK(r.size() == 9);
  CHECK(rows[1] == Row{"new failure", "q/b2", "avx2", "check", "pass", "fail", "", "",
                       "first mismatch [7]: expected 1, got 2"});
  CHECK(rows[5].at(6) == "0.5");

  const Output json = report({"--compare", "1", "2", "--db", path, "--format", "json"});
  REQUIRE(json.status == 0);
  const nlohmann::json parsed = nlohmann::json::parse(json.out);
  REQUIRE(parsed.size() == 8);
  CHECK(parsed[0]["change"] == "new failure");
  CHECK(parsed[2]["change"] == "fixed");
  CHECK(parsed[4]["metric"] == "time");
  CHECK(parsed[4]["relative"] == "0.5");

  const Output table = report({"--compare", "1", "2", "--db", path});
  REQUIRE(table.status == 0);
  CHECK_THAT(table.out, Contains("A = run 1 ("));
  CHECK_THAT(table.out, Contains("a.toml"));
  CHECK_THAT(table.out, Contains("2 new failures, 1 fixed"));
}

TEST_CASE("report: runs are named by id, last and last~N; unknown ones are errors") {
  const std::string path = fresh_db("runs");
  kvq::Store store(path);
  CHECK_THROWS_WITH(kvq::resolve_run(store.handle(), "last", path), Contains("no runs stored"));
  two_runs(store);
  method_run(store);
  CHECK(kvq::resolve_run(store.handle(), "last", path) == 3);
  CHECK(kvq::resolve_run(store.handle(), "last~0", path) == 3);
  CHECK(kvq::resolve_run(store.handle(), "last~2", path) == 1);
  CHECK(kvq::resolve_run(store.handle(), "2", path) == 2);
  CHECK_THROWS_WITH(kvq::resolve_run(store.handle(), "9", path),
                    Contains("run 9: no such run") && Contains("stored: 1, 2, 3"));
  CHECK_THROWS_WITH(kvq::resolve_run(store.handle(), "last~3", path),
                    Contains("holds only 3 run(s)"));
  CHECK_THROWS_WITH(kvq::resolve_run(store.handle(), "-1", path), Contains("'last~N'"));
  CHECK_THROWS_WITH(kvq::resolve_run(store.handle(), "last~x", path), Contains("'last~x'"));
}

TEST_CASE("report accuracy: one row per input, method and bits with the stored metrics") {
  const std::string path = fresh_db("accuracy");
  kvq::Store store(path);
  method_run(store);
  two_runs(store);  // newer runs without method cases: accuracy still reads run 1
  const Output o = report({"accuracy", "--db", path, "--format", "json"});
  REQUIRE(o.status == 0);
  const nlohmann::json rows = nlohmann::json::parse(o.out);
  REQUIRE(rows.size() == 5);
  // Ordered by input, bits, then scenario order.
  CHECK(rows[0]["input"] == "acc");
  CHECK(rows[0]["method"] == "rtn");
  CHECK(rows[0]["bits"] == 2);  // typed JSON: INTEGER and REAL as numbers
  CHECK(rows[0]["kv_nmse"] == 0.1);
  CHECK(rows[0]["kv_nmse"].is_number_float());
  CHECK(rows[1]["method"] == "kivi");
  CHECK(rows[1]["attention_rel_error"] == 0.12);
  CHECK(rows[1]["attention_rel_l2"] == 0.2);
  CHECK(rows[2]["method"] == "rotatekv");
  CHECK(rows[2]["bits_per_element"] == 2.25);
  CHECK(rows[3]["bits"] == 4);
  CHECK(rows[4]["kv_nmse"] == 0.002);
  CHECK(rows[0]["ppl"].is_null());  // not measured: null, never 0
  CHECK(rows[0]["score_kl"].is_null());

  const Output run2 = report({"accuracy", "--db", path, "--run", "2", "--format", "csv"});
  REQUIRE(run2.status == 0);
  CHECK(parse_csv(run2.out).size() == 1);  // header only: run 2 has no method cases
}

TEST_CASE("report orderings: rotatekv < kivi < rtn stated as held or not, with the values") {
  const std::string path = fresh_db("orderings");
  kvq::Store store(path);
  method_run(store);
  std::string sql;
  for (const auto& [name, text] : kvq::named_queries())
    if (name == "accuracy") sql = text;
  REQUIRE(!sql.empty());
  const kvq::QueryResult accuracy = kvq::run_report_query(store.handle(), sql, std::nullopt);
  const kvq::QueryResult o = kvq::paper_orderings(accuracy);
  const std::vector<Row> want = {
      {"acc", "2", "kv_nmse", "0.01", "0.05", "0.1", "held"},
      {"acc", "2", "attention_rel_error", "0.02", "0.12", "0.1",
       "did not hold: kivi 0.12 > rtn 0.1"},
      {"acc", "2", "attention_rel_l2", "0.1", "0.2", "0.3", "held"},
      {"acc", "4", "kv_nmse", "", "0.002", "0.004", "not measured: no rotatekv"},
      {"acc", "4", "attention_rel_error", "", "0.001", "0.003", "not measured: no rotatekv"},
      {"acc", "4", "attention_rel_l2", "", "0.02", "0.03", "not measured: no rotatekv"},
  };
  CHECK(o.rows == want);

  // A run from before a metric existed (column empty for all three) gets no row for it.
  kvq::QueryResult older = accuracy;
  const size_t l2 = static_cast<size_t>(
      std::find(older.columns.begin(), older.columns.end(), "attention_rel_l2") -
      older.columns.begin());
  REQUIRE(l2 < older.columns.size());
  for (Row& r : older.rows) r.at(l2) = "";
  CHECK(kvq::paper_orderings(older).rows.size() == 4);

  // A tie is not "lower": both pairs fail and are named.
  kvq::QueryResult tie = accuracy;
  tie.rows.resize(3);
  for (Row& r : tie.rows) r.at(3) = "0.5";  // kv_nmse equal for all three
  CHECK(kvq::paper_orderings(tie).rows.at(0).at(6) ==
        "did not hold: rotatekv 0.5 = kivi 0.5, kivi 0.5 = rtn 0.5");

  const Output table = report({"accuracy", "--db", path});
  REQUIRE(table.status == 0);
  CHECK_THAT(table.out, Contains("acc, 2 bits: kv_nmse held; attention_rel_error did not hold: "
                                 "kivi 0.12 > rtn 0.1"));
  const Output json = report({"orderings", "--db", path, "--format", "json"});
  REQUIRE(json.status == 0);
  CHECK(nlohmann::json::parse(json.out).at(1)["ordering"] == "did not hold: kivi 0.12 > rtn 0.1");
}

TEST_CASE("report sinks and experts: predictor scores and the Super Expert list as stored") {
  const std::string path = fresh_db("studies");
  kvq::Store store(path);
  // The layout of store_sink_study / store_expert_study (harness/{sink,expert}_study.cpp).
  const int64_t r = store.begin_run(info("rec.safetensors"));
  kvq::CaseRecord sink = record("sinks/rec/pfn1", {{"op", "sinks"},
                                                   {"study", "sinks"},
                                                   {"recording", "rec.safetensors"},
                                                   {"predictor", "pfn1"},
                                                   {"predicted", {0}},
                                                   {"unscored", nlohmann::json::array()},
                                                   {"missed", {17, 40}},
                                                   {"extra", nlohmann::json::array()}});
  store.add_case(r, sink, {},
                 {measure("ref", "precision", 1.0), measure("ref", "recall", 1.0 / 3.0),
                  measure("ref", "planted_recall", 0.5)});
  kvq::CaseRecord se = record("experts/rec/L2E5", {{"op", "super_experts"},
                                                   {"study", "experts"},
                                                   {"recording", "rec.safetensors"},
                                                   {"rank", 1},
                                                   {"layer", 2},
                                                   {"expert", 5},
                                                   {"token", 0},
                                                   {"channel", 77}});
  store.add_case(r, se, {}, {measure("ref", "max_abs", 1234.5)});
  kvq::CaseRecord selection = record("experts/rec/selection", {{"op", "super_experts"}});
  store.add_case(r, selection, {}, {measure("ref", "super_experts", 1.0)});
  store.finish_run(r, "complete");

  const Output sinks = report({"sinks", "--db", path, "--format", "json"});
  REQUIRE(sinks.status == 0);
  const nlohmann::json s = nlohmann::json::parse(sinks.out);
  REQUIRE(s.size() == 1);
  CHECK(s[0]["input"] == "rec.safetensors");
  CHECK(s[0]["predictor"] == "pfn1");
  CHECK(s[0]["predicted"] == 1);
  CHECK(s[0]["recall"] == 0.3333);
  CHECK(s[0]["planted_precision"].is_null());
  CHECK(s[0]["planted_recall"] == 0.5);
  CHECK(s[0]["missed"] == "17,40");
  CHECK(s[0]["extra"] == "");

  const Output experts = report({"experts", "--db", path, "--format", "csv"});
  REQUIRE(experts.status == 0);
  const std::vector<Row> e = parse_csv(experts.out);
  REQUIRE(e.size() == 2);  // the selection case is not a Super Expert
  CHECK(e[0] == Row{"input", "rank", "layer", "expert", "max_abs", "token", "channel"});
  CHECK(e[1] == Row{"rec.safetensors", "1", "2", "5", "1234.5", "0", "77"});
}

TEST_CASE("report sinks and experts: the scenario ops' layout (one case per recording)") {
  const std::string path = fresh_db("study-ops");
  kvq::Store store(path);
  // The layout of harness/{sinks,experts}_op.cpp through the runner: the case's params plus
  // "result"; measurements named PREDICTOR.metric.
  const int64_t r = store.begin_run(info("scenarios/sinks.toml"));
  const nlohmann::json predictors = {{"kvsink",
                                      {{"predicted", {0, 5}},
                                       {"missed", nlohmann::json::array()},
                                       {"extra", nlohmann::json::array()},
                                       {"unscored", nlohmann::json::array()}}},
                                     {"pfn1",
                                      {{"predicted", {0}},
                                       {"missed", {5}},
                                       {"extra", nlohmann::json::array()},
                                       {"unscored", nlohmann::json::array()}}}};
  kvq::CaseRecord sinks = record(
      "sinks/synthetic/pfn1",
      {{"op", "sinks"},
       {"input", "synthetic"},
       {"result", {{"recording", "synthetic"}, {"truth", {0, 5}}, {"predictors", predictors}}}});
  store.add_case(r, sinks, {},
                 {measure("ref", "truth.sinks", 2.0), measure("ref", "kvsink.precision", 1.0),
                  measure("ref", "kvsink.recall", 1.0), measure("ref", "pfn1.precision", 1.0),
                  measure("ref", "pfn1.recall", 0.5), measure("ref", "pfn1.planted_recall", 0.5)});
  const nlohmann::json list = {
      {{"rank", 1},
       {"layer", 3},
       {"expert", 7},
       {"max_abs", 900.25},
       {"token", 0},
       {"channel", 11}},
      {{"rank", 2}, {"layer", 1}, {"expert", 2}, {"max_abs", 512.5}, {"token", 4}, {"channel", 9}}};
  kvq::CaseRecord experts = record(
      "experts/synthetic",
      {{"op", "experts"}, {"result", {{"recording", "moe.safetensors"}, {"super_experts", list}}}});
  store.add_case(r, experts, {}, {measure("ref", "super_experts", 2.0)});
  store.finish_run(r, "complete");

  const Output s = report({"sinks", "--db", path, "--format", "csv"});
  REQUIRE(s.status == 0);
  const std::vector<Row> sr = parse_csv(s.out);
  REQUIRE(sr.size() == 3);
  // nlohmann::json orders object keys: kvsink before pfn1.
  const std::string name = "sinks/synthetic/pfn1";
  CHECK(sr[1] == Row{name, "kvsink", "2", "1.0", "1.0", "", "", "", "", ""});
  CHECK(sr[2] == Row{name, "pfn1", "1", "1.0", "0.5", "", "0.5", "5", "", ""});

  const Output e = report({"experts", "--db", path, "--format", "csv"});
  REQUIRE(e.status == 0);
  const std::vector<Row> er = parse_csv(e.out);
  REQUIRE(er.size() == 3);
  CHECK(er[1] == Row{"experts/synthetic", "1", "3", "7", "900.25", "0", "11"});
  CHECK(er[2] == Row{"experts/synthetic", "2", "1", "2", "512.5", "4", "9"});
}

TEST_CASE("report: unknown query, unknown run and empty database are clear errors") {
  const std::string path = fresh_db("errors");
  { kvq::Store store(path); }
  const Output empty = report({"accuracy", "--db", path});
  CHECK(empty.status == 2);
  CHECK_THAT(empty.error, Contains("no runs stored"));
  {
    kvq::Store store(path);
    two_runs(store);
  }
  const Output unknown = report({"acuracy", "--db", path});
  CHECK(unknown.status == 2);
  CHECK_THAT(unknown.error, Contains("unknown query 'acuracy'") && Contains("accuracy") &&
                                Contains("sinks") && Contains("experts") && Contains("speedup"));
  const Output run = report({"last_run", "--db", path, "--run", "7"});
  CHECK(run.status == 2);
  CHECK_THAT(run.error, Contains("run 7: no such run") && Contains("stored: 1, 2"));
  const Output one = report({"--compare", "1", "--db", path});
  CHECK(one.status == 2);
  CHECK_THAT(one.error, Contains("--compare takes two runs"));
  const Output speed = report({"speed", "--db", path, "--format", "csv"});
  CHECK(speed.status == 0);
  CHECK(parse_csv(speed.out).at(0).at(5) == "speedup");
  // last_run honours --run: run 1 had the case "gone".
  CHECK_THAT(report({"last_run", "--db", path, "--run", "1"}).out, Contains("gone"));
  CHECK_FALSE(report({"last_run", "--db", path}).out.find("gone") != std::string::npos);
}

TEST_CASE("report speedup: a run without ref times uses the newest earlier ref run of its host") {
  const std::string path = fresh_db("speedup");
  {
    kvq::Store s(path);
    // Run 1, host "test": ref 2.0 s and avx2 0.5 s. Run 2, same host: avx512 0.25 s only.
    // Run 3, host "other": avx2 0.1 s only (no reference on that host).
    const int64_t r1 = s.begin_run(info("perf.toml"));
    s.add_case(r1, record("q/b2"), {}, {measure("ref", "time", 2.0), measure("avx2", "time", 0.5)});
    s.finish_run(r1, "complete");
    const int64_t r2 = s.begin_run(info("perf.toml"));
    s.add_case(r2, record("q/b2"), {}, {measure("avx512", "time", 0.25)});
    s.finish_run(r2, "complete");
    kvq::RunInfo elsewhere = info("perf.toml");
    elsewhere.host = "other";
    const int64_t r3 = s.begin_run(elsewhere);
    s.add_case(r3, record("q/b2"), {}, {measure("avx2", "time", 0.1)});
    s.finish_run(r3, "complete");
  }
  const auto rows = [&](const std::string& run) {
    const Output o = report({"speedup", "--db", path, "--run", run, "--format", "csv"});
    REQUIRE(o.status == 0);
    return parse_csv(o.out);
  };
  const std::vector<Row> one = rows("1");
  REQUIRE(one.size() == 2);  // header + avx2
  CHECK(one[1] == Row{"q/b2", "avx2", "2.0", "0.5", "s", "4.0", "1"});
  const std::vector<Row> two = rows("2");
  REQUIRE(two.size() == 2);
  CHECK(two[1] == Row{"q/b2", "avx512", "2.0", "0.25", "s", "8.0", "1"});  // 2.0 / 0.25 from run 1
  CHECK(rows("3").size() == 1);  // another host's reference is never used
}

TEST_CASE("report vlm and memory: one row per study case, winners decided from the stored errors") {
  const std::string path = fresh_db("studies");
  {
    kvq::Store s(path);
    const int64_t r = s.begin_run(info("vlm.toml"));
    kvq::CaseRecord v = record("vlm/a/b2", {{"op", "vlm"}, {"image_tokens", 64},
                                            {"text_attention", 4.0}, {"bits", 2}});
    v.op = "vlm";
    s.add_case(r, v, {},
               {measure("ref", "akvq_attention_rel_error", 0.2),
                measure("ref", "uniform_attention_rel_error", 0.3),
                measure("ref", "spec_attention_rel_error", 0.5),
                measure("ref", "spec_avg_bits", 2.75), measure("ref", "uniform_above_bits", 3),
                measure("ref", "uniform_above_attention_rel_error", 0.4)});
    kvq::CaseRecord m = record("memory/x/rtn/b2/context4096",
                               {{"op", "memory"}, {"method", "rtn"}, {"bits", 2}, {"context", 4096}});
    m.op = "memory";
    s.add_case(r, m, {},
               {measure("ref", "bytes_per_token", 1000.0), measure("ref", "max_batch", 12),
                measure("ref", "fp16_max_batch", 3), measure("ref", "batch_ratio", 4.0),
                measure("ref", "memory_ratio", 2.5)});
    s.finish_run(r, "complete");
  }
  const Output vlm = report({"vlm", "--db", path, "--format", "json"});
  REQUIRE(vlm.status == 0);
  const nlohmann::json v = nlohmann::json::parse(vlm.out);
  REQUIRE(v.size() == 1);
  CHECK(v[0]["case"] == "vlm/a/b2");
  CHECK(v[0]["image_tokens"] == 64);
  CHECK(v[0]["equal_bits_winner"] == "akvq-vl");  // 0.2 < 0.3
  CHECK(v[0]["spec_vs_above_winner"] == "uniform");  // 0.5 > 0.4
  CHECK(v[0]["uniform_above_bits"] == 3);
  const Output mem = report({"memory", "--db", path, "--format", "json"});
  REQUIRE(mem.status == 0);
  const nlohmann::json mm = nlohmann::json::parse(mem.out);
  REQUIRE(mm.size() == 1);
  CHECK(mm[0]["method"] == "rtn");
  CHECK(mm[0]["context"] == 4096);
  CHECK(mm[0]["max_batch"] == 12);
  CHECK(mm[0]["fp16_max_batch"] == 3);
  CHECK(mm[0]["batch_ratio"] == 4.0);
  CHECK(mm[0]["paper_batch_ratio"].is_null());  // rtn: no paper claim stored
}

TEST_CASE("report --help lists every query with one line each") {
  const Output help = report({"--help"});
  REQUIRE(help.status == 0);
  for (const char* name : {"last_run", "failing", "speedup", "accuracy", "sinks", "experts",
                           "memory", "vlm", "speed", "orderings", "--compare A B"}) {
    INFO(name);
    CHECK_THAT(help.out, Contains(std::string("\n  ") + name + " "));
  }
  CHECK_THAT(help.out, Contains("Method x bits -> KV NMSE"));
}

TEST_CASE("report json: numbers are numbers, NULL is null, text is a string, by SQLite type") {
  const std::string path = fresh_db("json-types");
  {
    kvq::Store store(path);
    method_run(store);
  }
  const Output o = report({"--db", path, "--format", "json", "--sql",
                           "SELECT 7 AS i, 2.5 AS r, NULL AS n, 'x' AS t, '7' AS s, 1e308 * 10 AS inf"});
  REQUIRE(o.status == 0);
  const nlohmann::json rows = nlohmann::json::parse(o.out);
  REQUIRE(rows.size() == 1);
  CHECK(rows[0]["i"].is_number_integer());
  CHECK(rows[0]["i"] == 7);
  CHECK(rows[0]["r"].is_number_float());
  CHECK(rows[0]["r"] == 2.5);
  CHECK(rows[0]["n"].is_null());
  CHECK(rows[0]["t"] == "x");
  CHECK(rows[0]["s"] == "7");       // TEXT that looks like a number stays text
  CHECK(rows[0]["inf"] == "Inf");   // JSON has no infinity: SQLite's text
  // The CSV and table keep SQLite's text: NULL empty.
  const Output csv = report({"--db", path, "--format", "csv", "--sql", "SELECT 7 AS i, NULL AS n"});
  CHECK(csv.out == "i,n\n7,\n");
}

TEST_CASE("report: a run that did not finish is stated as such on stderr") {
  const std::string path = fresh_db("unfinished");
  kvq::Store store(path);
  method_run(store);  // run 1, complete
  const int64_t killed = store.begin_run(info("killed.toml"));  // run 2: no finish, as a SIGKILL
  store.add_case(killed, record("q/b2"), {check("fail", 3, "1", "2")}, {});
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"--db", path}, std::vector<std::string>{"failing", "--db", path},
        std::vector<std::string>{"failing", "--db", path, "--format", "json"},
        std::vector<std::string>{"--compare", "1", "2", "--db", path}}) {
    const Output o = report(args);
    INFO(args[0] << " " << o.error);
    REQUIRE(o.status == 0);
    CHECK(o.err == "kvq: note: run 2 is incomplete: it has no finish (killed, or still running); "
                   "the report shows only the cases it stored\n");
  }
  // The rows are still there, and JSON stays parseable (the note is not in stdout).
  const Output json = report({"failing", "--db", path, "--format", "json"});
  CHECK(nlohmann::json::parse(json.out).at(0)["case"] == "q/b2");
  // A finished run says nothing; a run stopped by an error says it failed.
  CHECK(report({"--db", path, "--run", "1"}).err.empty());
  store.finish_run(killed, "failed");
  CHECK_THAT(report({"failing", "--db", path}).err, Contains("run 2 failed: it stopped before"));
  CHECK(report({"--db", path, "--sql", "SELECT 1"}).err.empty());  // no run shown
}
