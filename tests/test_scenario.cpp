// Scenario loader (docs/scenario-format.md): sweep expansion, stable names, and one kvq::Error
// naming FILE:LINE and the key for every kind of malformed input.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "harness/io/safetensors.h"
#include "harness/scenario/scenario.h"
#include "reference/error.h"
#include "tests/scratch.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

// A fresh folder per test case; files are written into it by the test itself.
fs::path fresh_dir(const std::string& name) {
  const fs::path dir =
      kvq::testing::scratch_root("scenario") / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string write_file(const fs::path& dir, const std::string& name, const std::string& text) {
  const fs::path path = dir / name;
  std::ofstream(path) << text;
  return path.string();
}

std::vector<std::string> names(const kvq::Scenario& s) {
  std::vector<std::string> out;
  for (const kvq::ScenarioCase& c : s.cases) out.push_back(c.name);
  return out;
}

// Loads `text` as bad.toml and returns the error message (fails the test when none is thrown).
std::string load_error(const std::string& test, const std::string& text) {
  const std::string path = write_file(fresh_dir(test), "bad.toml", text);
  try {
    kvq::load_scenario(path);
  } catch (const kvq::Error& e) {
    return e.what();
  }
  FAIL("no kvq::Error for " << test);
  return "";
}

// The message names the file and the line, and the key.
// "" when `message` names FILE:LINE: of the test's bad.toml and `key`, else what it lacks:
// CHECK(names_problem(...) == "") prints both on failure.
std::string names_problem(const std::string& message, const std::string& test, int line,
                          const std::string& key) {
  const std::string where =
      (fresh_dir(test) / "bad.toml").string() + ":" + std::to_string(line) + ":";
  if (message.find(where) == std::string::npos) return "'" + message + "' lacks '" + where + "'";
  if (message.find(key) == std::string::npos) return "'" + message + "' lacks '" + key + "'";
  return "";
}

}  // namespace

TEST_CASE("scenario: sweeps expand to the cartesian product in file key order") {
  const fs::path dir = fresh_dir("good");
  const std::string path = write_file(dir, "good.toml", R"([scenario]
name = "good"
description = "two cases"
backends = ["ref"]

[[case]]
op = ["quantize", "dequantize"]
tokens = 7
bits = [2, 4]
axis = ["token", "channel"]

[[case]]
name = "rot"
op = "rotate_k"
head_dim = [64, 128]
heads = 8
head_group = 4
reorder = false

[[case]]
op = "fwht"
n = 16
)");
  const kvq::Scenario s = kvq::load_scenario(path);
  CHECK(s.name == "good");
  CHECK(s.description == "two cases");
  CHECK(s.reference == "ref");
  CHECK(s.backends == std::vector<std::string>{"ref"});
  // 2 ops x 2 bits x 2 axes, then 2 head_dims, then one unswept case; the last key varies fastest.
  CHECK(names(s) == std::vector<std::string>{"quantize/b2/token", "quantize/b2/channel",
                                             "quantize/b4/token", "quantize/b4/channel",
                                             "dequantize/b2/token", "dequantize/b2/channel",
                                             "dequantize/b4/token", "dequantize/b4/channel",
                                             "rot/d64", "rot/d128", "fwht"});
  const kvq::ScenarioCase& c = s.cases[5];
  CHECK(c.params["op"] == "dequantize");
  CHECK(c.params["bits"] == 2);
  CHECK(c.params["axis"] == "channel");
  CHECK(c.params["tokens"] == 7);
  CHECK(c.input == "synthetic");
  CHECK_THAT(c.where, Contains(path + ":6"));
  // The op's struct: given keys, then each op's defaults (harness/scenario/case_keys.cpp).
  const kvq::BackendCase& k = kvq::case_keys<kvq::BackendCase>(c);
  CHECK(c.op == "dequantize");
  CHECK(k.op == kvq::Op::Dequantize);
  CHECK(k.bits == 2);
  CHECK(k.group == 128);  // absent: the default
  CHECK(k.axis == "channel");
  CHECK(k.tokens == 7);
  CHECK(k.gate == "exact");
  CHECK(k.tensor == "k");
  CHECK(kvq::case_keys<kvq::BackendCase>(s.cases[8]).reorder == false);
  CHECK(kvq::case_keys<kvq::BackendCase>(s.cases[8]).tensor == "k_pre_rope");  // rotate_k's
  CHECK(s.cases[8].params["head_dim"] == 64);
  CHECK(kvq::case_keys<kvq::BackendCase>(s.cases[10]).outlier_channels == 0);  // fwht's
  // Loading twice gives the same names: they are stable identifiers in the results store.
  CHECK(names(kvq::load_scenario(path)) == names(s));
}

TEST_CASE("scenario: name defaults to the file stem; backends per case override") {
  const fs::path dir = fresh_dir("stem");
  const std::string path = write_file(dir, "my-stem.toml", R"([[case]]
op = "fwht"
n = [2, 4]
backends = ["ref", "avx2"]
tolerance = 0
)");
  const kvq::Scenario s = kvq::load_scenario(path);
  CHECK(s.name == "my-stem");
  CHECK(s.backends.empty());
  REQUIRE(names(s) == std::vector<std::string>{"fwht/n2", "fwht/n4"});
  CHECK(s.cases[1].backends == std::vector<std::string>{"ref", "avx2"});
  CHECK(kvq::case_keys<kvq::BackendCase>(s.cases[1]).tolerance == 0.0);
  CHECK(kvq::case_keys<kvq::BackendCase>(s.cases[1]).n == 4);
}

TEST_CASE("scenario: a recording without layers sweeps every layer it holds") {
  const fs::path dir = fresh_dir("recording");
  std::vector<float> data(2 * 1 * 4, 1.0f);
  const kvq::TensorView view{data.data(), kvq::DType::F32, {2, 1, 4}};
  kvq::write_safetensors((dir / "rec.safetensors").string(),
                         {{"layers.0.k", view}, {"layers.1.k", view}, {"layers.2.k", view}}, {});
  const std::string path = write_file(dir, "rec.toml", R"([[case]]
op = "quantize"
input = "rec.safetensors"
bits = [2, 4]
)");
  const kvq::Scenario s = kvq::load_scenario(path);
  CHECK(names(s) == std::vector<std::string>{"quantize/b2/L0", "quantize/b2/L1", "quantize/b2/L2",
                                             "quantize/b4/L0", "quantize/b4/L1", "quantize/b4/L2"});
  // The path is resolved against the scenario's folder.
  CHECK(fs::equivalent(s.cases[0].input, dir / "rec.safetensors"));
}

TEST_CASE("scenario: TOML syntax error names file:line") {
  const std::string m = load_error("syntax", "[[case]]\nop = \"fwht\"\nn = [2, 4\n");
  // toml++ reports where the array went wrong; the message carries the line's text (its key).
  CHECK(names_problem(m, "syntax", 3, "n = [2, 4") == "");
}

TEST_CASE("scenario: unknown key in [[case]] names file:line and key") {
  const std::string m = load_error("case_key", "[[case]]\nop = \"fwht\"\nsize = 4\n");
  CHECK(names_problem(m, "case_key", 3, "'size'") == "");
  CHECK_THAT(m, Contains("unknown key"));
}

TEST_CASE("scenario: unknown key in [scenario] names file:line and key") {
  const std::string m =
      load_error("scenario_key", "[scenario]\nname = \"x\"\nrefrence = \"ref\"\n");
  CHECK(names_problem(m, "scenario_key", 3, "'refrence'") == "");
  CHECK_THAT(m, Contains("unknown key"));
}

TEST_CASE("scenario: wrong type names file:line and key") {
  const std::string m = load_error("type", "[[case]]\nop = \"quantize\"\n\nbits = \"two\"\n");
  CHECK(names_problem(m, "type", 4, "'bits'") == "");
  CHECK_THAT(m, Contains("integer"));
}

TEST_CASE("scenario: bits = 5 is rejected, also inside a sweep") {
  CHECK(names_problem(load_error("bits5", "[[case]]\nop = \"quantize\"\nbits = 5\n"), "bits5", 3,
                      "'bits'") == "");
  CHECK(names_problem(load_error("bits5s", "[[case]]\nop = \"quantize\"\nbits = [2, 5]\n"),
                      "bits5s", 3, "'bits'") == "");
}

TEST_CASE("scenario: group = 0 is rejected") {
  CHECK(names_problem(load_error("group0", "[[case]]\nop = \"quantize\"\ngroup = 0\n"), "group0", 3,
                      "'group'") == "");
}

TEST_CASE("scenario: fwht n = 100 is rejected (not a power of two)") {
  const std::string m = load_error("n100", "[[case]]\nop = \"fwht\"\nn = 100\n");
  CHECK(names_problem(m, "n100", 3, "'n'") == "");
  CHECK_THAT(m, Contains("100"));
}

TEST_CASE("scenario: rotate_k with head_group * head_dim not a power of two is rejected") {
  // 3 * 64 = 192; heads = 6 is divisible by 3, so only the power-of-two rule is broken.
  const std::string m =
      load_error("hg", "[[case]]\nop = \"rotate_k\"\nheads = 6\nhead_dim = 64\nhead_group = 3\n");
  CHECK(names_problem(m, "hg", 5, "'head_group'") == "");
  CHECK_THAT(m, Contains("192"));
}

TEST_CASE("scenario: a missing recording file is named") {
  const std::string m =
      load_error("norec", "[[case]]\nop = \"quantize\"\ninput = \"absent.safetensors\"\n");
  CHECK(names_problem(m, "norec", 3, "'input'") == "");
  CHECK_THAT(m, Contains("absent.safetensors"));
}

TEST_CASE("scenario: duplicate case names are rejected") {
  const std::string m = load_error(
      "dup", "[[case]]\nop = \"fwht\"\nn = 4\n\n[[case]]\nname = \"fwht\"\nop = \"fwht\"\nn = 8\n");
  CHECK(names_problem(m, "dup", 5, "'name'") == "");
  CHECK_THAT(m, Contains("'fwht'"));
}

TEST_CASE("scenario: a case without op is rejected") {
  const std::string m = load_error("noop", "[[case]]\nop = \"fwht\"\n\n[[case]]\nbits = 2\n");
  CHECK(names_problem(m, "noop", 4, "'op'") == "");
}

TEST_CASE("scenario: an unknown op is rejected") {
  const std::string m = load_error("badop", "[[case]]\nop = \"fwht2\"\n");
  CHECK(names_problem(m, "badop", 2, "'op'") == "");
  CHECK_THAT(m, Contains("fwht2"));
}

TEST_CASE("scenario: op = method without a method is rejected") {
  const std::string m = load_error("nomethod", "[[case]]\nop = \"method\"\nbits = 2\n");
  CHECK(names_problem(m, "nomethod", 1, "'method'") == "");
}

TEST_CASE("scenario: gate = tolerance on a bit-exact op is rejected at the gate key") {
  const std::string m =
      load_error("tolgate", "[[case]]\nop = \"quantize\"\nbits = 2\ngate = \"tolerance\"\n");
  CHECK(names_problem(m, "tolgate", 4, "'gate'") == "");
  CHECK_THAT(m, Contains("attention_decode"));
}

TEST_CASE("scenario: swept numbers get their key's prefix in the case name") {
  const fs::path dir = fresh_dir("prefixes");
  const std::string path = write_file(dir, "p.toml", R"([[case]]
op = "expert_statistics"
experts = [8, 16]
top_k = [1, 2]

[[case]]
op = "attention_decode"
q_heads = 16
tolerance = [0.0, 0.001]
)");
  CHECK(names(kvq::load_scenario(path)) ==
        std::vector<std::string>{"expert_statistics/E8/k1", "expert_statistics/E8/k2",
                                 "expert_statistics/E16/k1", "expert_statistics/E16/k2",
                                 "attention_decode/tol0.0", "attention_decode/tol0.001"});
}

TEST_CASE("scenario: q_heads must be a multiple of heads and top_k at most experts") {
  CHECK(names_problem(
            load_error("qheads", "[[case]]\nop = \"attention_decode\"\nheads = 8\nq_heads = 12\n"),
            "qheads", 4, "'q_heads'") == "");
  CHECK(names_problem(
            load_error("topk", "[[case]]\nop = \"expert_statistics\"\nexperts = 2\ntop_k = 3\n"),
            "topk", 4, "'top_k'") == "");
}

TEST_CASE("scenario: ${NAME} in a string takes --var's value; an unset one names file:line:col") {
  const fs::path dir = fresh_dir("vars");
  write_file(dir, "model \"q\".bin", "x");  // a value with a quote and a space
  const std::string text =
      "# ${not_a_variable} in a comment is left alone\n"
      "[[case]]\n"
      "name = \"m\"\n"
      "op = \"method\"\n"
      "method = \"rtn\"\n"
      "model = \"${dir}/${file}\"\n"
      "tokenizer = \"${file}\"\n"
      "text = \"${file}\"\n";
  const std::string path = write_file(dir, "vars.toml", text);
  const kvq::Scenario s =
      kvq::load_scenario(path, {{"dir", dir.string()}, {"file", "model \"q\".bin"}});
  REQUIRE(s.cases.size() == 1);
  CHECK(s.cases[0].params.at("model").get<std::string>() ==
        (dir / "model \"q\".bin").string());
  try {
    kvq::load_scenario(path, {{"dir", dir.string()}});
    FAIL("no error for an unset variable");
  } catch (const kvq::Error& e) {
    CHECK_THAT(e.what(), Contains(path + ":6:") && Contains("variable 'file' is not set") &&
                             Contains("--var file=VALUE"));
  }
  CHECK_THAT(load_error("vars_syntax", "[[case]]\nop = \"fwht\"\nname = \"${}\"\n"),
             Contains("bad.toml:3:") && Contains("${NAME}"));
}

TEST_CASE("scenario: massive_rule is token or channel, checked at load time") {
  CHECK_THAT(load_error("massive_rule", "[[case]]\nop = \"sinks\"\nmassive_rule = \"median\"\n"),
             Contains("bad.toml:3:") && Contains("massive_rule") && Contains("channel"));
}

TEST_CASE("scenario: docs/scenario-format.md's key table is the loader's (case_keys_markdown)") {
  // A key added to the tables (harness/scenario/case_keys.cpp) but not to the doc, or the other way
  // round, or a changed default, fails here; the message shows the table to paste.
  const char* root = std::getenv("KVQ_SOURCE_ROOT");
  REQUIRE(root != nullptr);
  std::ifstream in(fs::path(root) / "docs" / "scenario-format.md");
  REQUIRE(in);
  const std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string begin = "<!-- key table: tests/test_scenario.cpp checks it -->\n";
  const std::string end = "<!-- end of the key table -->";
  const size_t from = doc.find(begin), to = doc.find(end);
  REQUIRE(from != std::string::npos);
  REQUIRE(to != std::string::npos);
  const std::string table = doc.substr(from + begin.size(), to - from - begin.size());
  if (table != kvq::case_keys_markdown()) {
    std::ofstream("scenario-format-keys.md") << kvq::case_keys_markdown();
    FAIL("docs/scenario-format.md's key table differs from the loader's: the loader's is in "
         << fs::absolute("scenario-format-keys.md").string());
  }
  // Every key of the loader has a row; every row a key (the table is generated, but say so).
  for (const kvq::KeyDef& key : kvq::key_defs())
    CHECK(table.find("| `" + key.name + "` |") != std::string::npos);
}

TEST_CASE("scenario: every key an op table lists is a known key, and every key is read by an op") {
  std::set<std::string> read;
  for (const kvq::OpKeys& op : kvq::op_keys())
    for (const std::string& key : op.keys) {
      INFO(op.op << " reads " << key);
      CHECK(kvq::find_key_def(key) != nullptr);
      read.insert(key);
    }
  // name, op, input and backends shape the case itself (ScenarioCase), not an op's struct.
  for (const kvq::KeyDef& key : kvq::key_defs()) {
    INFO(key.name);
    CHECK((read.count(key.name) == 1) != (key.name == "name" || key.name == "op" ||
                                          key.name == "input" || key.name == "backends"));
  }
}
