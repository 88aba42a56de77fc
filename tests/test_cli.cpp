// The `kvq` binary as a user meets it ($KVQ_BIN, set by tests/meson.build): exit statuses (0 ok,
// 1 a failed gate, 2 bad input), one-line errors on stderr, help for every subcommand, and the
// run -> report round trip through SQLite.
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "harness/cli/cli.h"
#include "tests/scratch.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

fs::path fresh_dir(const std::string& name) {
  const fs::path dir =
      kvq::testing::scratch_root("cli") / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct Result {
  int status = -1;
  std::string out, err;
  std::vector<std::string> err_lines() const {
    std::vector<std::string> lines;
    std::istringstream in(err);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  }
};

// Runs `$KVQ_BIN ARGS` in `dir` with stdout and stderr captured to files there.
Result run_kvq(const fs::path& dir, const std::vector<std::string>& args) {
  const char* bin = std::getenv("KVQ_BIN");
  REQUIRE(bin != nullptr);  // set by meson test
  std::string command = "cd " + quote(dir.string()) + " && " + quote(bin);
  for (const std::string& a : args) command += " " + quote(a);
  command += " >" + quote((dir / "out.txt").string()) + " 2>" + quote((dir / "err.txt").string());
  const int raw = std::system(command.c_str());
  Result r;
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  r.out = read_file(dir / "out.txt");
  r.err = read_file(dir / "err.txt");
  return r;
}

void write(const fs::path& path, const std::string& text) {
  std::ofstream(path) << text;
}

// Four cases (fwht n4, n16; quantize b2, b4), without a backend list.
const std::string kPassingCases = R"([[case]]
op = "fwht"
tokens = 3
n = [4, 16]

[[case]]
op = "quantize"
tokens = 9
heads = 2
head_dim = 8
bits = [2, 4]
group = 8
)";
const std::string kPassing = "[scenario]\nbackends = [\"ref\"]\n\n" + kPassingCases;

// docs/spec.md §7's attention is within 1e-3 of the fp64 oracle, never bit-equal to it everywhere:
// a zero tolerance must make the gate fail.
const char* kFailing = R"([[case]]
op = "attention_decode"
tokens = 64
heads = 2
head_dim = 16
q_heads = 4
bits = 2
group = 16
tolerance = 0.0
backends = ["ref"]
)";

}  // namespace

TEST_CASE("cli: --help lists every subcommand with an example and exits 0") {
  const Result r = run_kvq(fresh_dir("help"), {"--help"});
  CHECK(r.status == 0);
  for (const kvq::Subcommand& sub : kvq::subcommands()) {
    CHECK_THAT(r.out, Contains(std::string("  ") + sub.name + " "));
    CHECK_THAT(r.out, Contains(sub.example));
  }
}

TEST_CASE("cli: SUBCOMMAND --help exits 0 for run, gate, report and backends") {
  const fs::path dir = fresh_dir("subhelp");
  for (const char* sub : {"run", "gate", "report", "backends"}) {
    const Result r = run_kvq(dir, {sub, "--help"});
    INFO(sub << ": " << r.err);
    CHECK(r.status == 0);
    CHECK_THAT(r.out, Contains(std::string("kvq ") + sub));
  }
}

TEST_CASE("cli: help SUB prints exactly what SUB --help prints, for every subcommand") {
  const fs::path dir = fresh_dir("helpsub");
  for (const kvq::Subcommand& sub : kvq::subcommands()) {
    const Result direct = run_kvq(dir, {sub.name, "--help"});
    const Result via_help = run_kvq(dir, {"help", sub.name});
    INFO(sub.name << ": " << via_help.err);
    CHECK(direct.status == 0);
    CHECK(via_help.status == 0);
    CHECK_FALSE(direct.out.empty());
    CHECK(via_help.out == direct.out);
  }
  const Result unknown = run_kvq(dir, {"help", "frobnicate"});
  CHECK(unknown.status == 2);
  CHECK_THAT(unknown.err, StartsWith("kvq: unknown subcommand 'frobnicate'"));
}

// Runs `git -C SOURCE_ROOT ARGS` and returns its first output line ("" when git fails).
std::string git_line(const std::string& args) {
  const char* root = std::getenv("KVQ_SOURCE_ROOT");
  REQUIRE(root != nullptr);  // set by meson test
  const std::string command = "git -C " + quote(root) + " " + args + " 2>/dev/null";
  FILE* pipe = ::popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buffer[256] = {};
  const bool got = std::fgets(buffer, sizeof buffer, pipe) != nullptr;
  const int status = ::pclose(pipe);
  std::string line = got && status == 0 ? buffer : "";
  if (!line.empty() && line.back() == '\n') line.pop_back();
  return line;
}

TEST_CASE("cli: --version prints the meson project version and the build's git revision") {
  const Result r = run_kvq(fresh_dir("version"), {"--version"});
  CHECK(r.status == 0);
  CHECK(r.err.empty());
  // The version as meson.build declares it, read here from the file itself.
  const std::string meson = read_file(fs::path(std::getenv("KVQ_SOURCE_ROOT")) / "meson.build");
  const size_t at = meson.find(" version: '");
  REQUIRE(at != std::string::npos);
  const std::string version = meson.substr(at + 11, meson.find('\'', at + 11) - at - 11);
  REQUIRE_THAT(r.out, StartsWith("kvq " + version + " (git "));
  const std::string revision = r.out.substr(("kvq " + version + " (git ").size());
  // meson test rebuilds first, so the binary is built from the checkout's HEAD.
  const std::string head = git_line("rev-parse --short=12 HEAD");
  if (head.empty()) {
    CHECK(revision == "unknown)\n");
  } else {
    const std::string dirty = git_line("status --porcelain --untracked-files=no").empty()
                                  ? ""
                                  : "-dirty";
    CHECK(revision == head + dirty + ")\n");
  }
}

TEST_CASE("cli: an unknown subcommand exits 2 with one line listing the subcommands") {
  const Result r = run_kvq(fresh_dir("unknown"), {"frobnicate"});
  CHECK(r.status == 2);
  REQUIRE(r.err_lines().size() == 1);
  CHECK_THAT(r.err, StartsWith("kvq: unknown subcommand 'frobnicate'"));
  CHECK_THAT(r.err, Contains(" run "));
  CHECK_THAT(r.err, Contains(" gate "));
  CHECK(run_kvq(fresh_dir("none"), {}).status == 2);
}

TEST_CASE("cli: a malformed scenario exits 2 with one line naming file:line and the key") {
  const fs::path dir = fresh_dir("malformed");
  write(dir / "bad.toml", "[[case]]\nop = \"quantize\"\nbits = 5\n");
  for (const char* sub : {"run", "gate"}) {
    const Result r = run_kvq(dir, {sub, "bad.toml", "--db", "kvq.db"});
    INFO(r.err);
    CHECK(r.status == 2);
    REQUIRE(r.err_lines().size() == 1);
    CHECK_THAT(r.err, StartsWith("kvq: bad.toml:3:"));
    CHECK_THAT(r.err, Contains("'bits'"));
  }
  // Nothing ran, so nothing was written.
  CHECK_FALSE(fs::exists(dir / "kvq.db"));
}

TEST_CASE("cli: an unknown option or backend exits 2 with one line") {
  const fs::path dir = fresh_dir("badopt");
  write(dir / "s.toml", kPassing);
  Result r = run_kvq(dir, {"run", "s.toml", "--no-such-option"});
  CHECK(r.status == 2);
  CHECK(r.err_lines().size() == 1);
  CHECK_THAT(r.err, Contains("no-such-option"));
  r = run_kvq(dir, {"run", "s.toml", "--backends", "ref,warp9", "--db", "kvq.db"});
  CHECK(r.status == 2);
  CHECK(r.err_lines().size() == 1);
  CHECK_THAT(r.err, Contains("warp9"));
}

TEST_CASE("cli: gate exits 0 on a passing scenario and 1 on a failing one, with the repro") {
  const fs::path dir = fresh_dir("gate");
  write(dir / "pass.toml", kPassing);
  write(dir / "fail.toml", kFailing);
  const Result pass = run_kvq(dir, {"gate", "pass.toml", "--db", "kvq.db"});
  INFO(pass.out << pass.err);
  CHECK(pass.status == 0);
  CHECK_THAT(pass.out, Contains("fwht/n16"));
  CHECK_THAT(pass.out, Contains("PASS"));

  const Result fail = run_kvq(dir, {"gate", "fail.toml", "--db", "kvq.db"});
  INFO(fail.out << fail.err);
  CHECK(fail.status == 1);
  CHECK_THAT(fail.out, Contains("FAIL"));
  CHECK_THAT(fail.out, Contains("Failing checks (1)"));
  CHECK_THAT(fail.out, Contains("attention_decode [ref]: first mismatch at values["));
  CHECK_THAT(fail.out, Contains("repro: kvq run fail.toml --filter '^attention_decode$' "
                                "--backends ref"));
  // `run` reports the same failure but exits 0: only the gate turns it into a status.
  CHECK(run_kvq(dir, {"run", "fail.toml", "--db", "kvq.db"}).status == 0);
}

TEST_CASE("cli: gate states per backend how many checks ran and passed") {
  const fs::path dir = fresh_dir("gate-summary");
  write(dir / "pass.toml", kPassing);
  const Result r = run_kvq(dir, {"gate", "pass.toml", "--db", "kvq.db"});
  INFO(r.out << r.err);
  CHECK(r.status == 0);
  // 2 fwht + 2 quantize cases, each checked on ref (the scenario names ref).
  CHECK_THAT(r.out, Contains("  ref      4 of 4 checks ran, 4 passed, 0 failed\n"));
}

// KVQ_MAX_ISA=scalar makes avx2 and avx512 unavailable on any machine (docs/readme-avx.md).
TEST_CASE("cli: gate exits 1 when a named backend is unavailable or no check ran") {
  const fs::path dir = fresh_dir("gate-skip");
  write(dir / "pass.toml", kPassing);
  write(dir / "named.toml", "[scenario]\nbackends = [\"ref\", \"avx2\"]\n" + kPassingCases);
  write(dir / "measured.toml",
        "[[case]]\nop = \"fwht\"\ntokens = 2\nn = 8\ngate = \"none\"\nbackends = [\"ref\"]\n");
  ::setenv("KVQ_MAX_ISA", "scalar", 1);
  const Result cli = run_kvq(dir, {"gate", "pass.toml", "--backends", "ref,avx2", "--db", "a.db"});
  const Result file = run_kvq(dir, {"gate", "named.toml", "--db", "b.db"});
  const Result only = run_kvq(dir, {"gate", "pass.toml", "--backends", "avx512", "--db", "c.db"});
  const Result allowed =
      run_kvq(dir, {"gate", "pass.toml", "--backends", "ref,avx2", "--allow-skip", "--db", "d.db"});
  // Without any backend list the run takes every available one: here ref only, none named.
  write(dir / "unnamed.toml", kPassingCases);
  const Result unnamed = run_kvq(dir, {"gate", "unnamed.toml", "--db", "e.db"});
  ::unsetenv("KVQ_MAX_ISA");
  for (const Result* r : {&cli, &file}) {
    INFO(r->out << r->err);
    CHECK(r->status == 1);
    REQUIRE(r->err_lines().size() == 1);
    CHECK_THAT(r->err, StartsWith("kvq gate: FAIL: backend 'avx2' was named but 4 of its checks "
                                  "did not run (not available: "));
    CHECK_THAT(r->err, Contains("--allow-skip"));
    CHECK_THAT(r->out, Contains("  avx2     0 of 4 checks ran, 0 passed, 0 failed, 4 skipped"));
  }
  INFO(only.out << only.err);
  CHECK(only.status == 1);
  CHECK_THAT(only.err, StartsWith("kvq gate: FAIL: backend 'avx512' was named"));
  INFO(allowed.out << allowed.err);
  CHECK(allowed.status == 0);
  INFO(unnamed.out << unnamed.err);
  CHECK(unnamed.status == 0);
  CHECK_THAT(unnamed.out, Contains("  ref      4 of 4 checks ran, 4 passed, 0 failed [not named"));

  const Result measured = run_kvq(dir, {"gate", "measured.toml", "--db", "f.db"});
  INFO(measured.out << measured.err);
  CHECK(measured.status == 1);
  REQUIRE(measured.err_lines().size() == 1);
  CHECK_THAT(measured.err, StartsWith("kvq gate: FAIL: no check ran (1 cases, 0 checks skipped, "
                                      "1 measured)"));
  CHECK(run_kvq(dir, {"gate", "measured.toml", "--allow-skip", "--db", "f.db"}).status == 0);
  CHECK(run_kvq(dir, {"run", "measured.toml", "--db", "f.db"}).status == 0);
}

TEST_CASE("cli: run and gate exit 2 on a scenario without a case or a filter matching none") {
  const fs::path dir = fresh_dir("nocase");
  write(dir / "empty.toml", "");
  write(dir / "header.toml", "[scenario]\nname = \"h\"\n");
  write(dir / "pass.toml", kPassing);
  for (const char* sub : {"run", "gate"}) {
    for (const char* file : {"empty.toml", "header.toml"}) {
      const Result r = run_kvq(dir, {sub, file, "--db", "kvq.db"});
      INFO(sub << " " << file << ": " << r.out << r.err);
      CHECK(r.status == 2);
      REQUIRE(r.err_lines().size() == 1);
      CHECK_THAT(r.err, StartsWith(std::string("kvq: ") + file + ": the scenario has no case"));
    }
    const Result r = run_kvq(dir, {sub, "pass.toml", "--filter", "^nomatch$", "--db", "kvq.db"});
    INFO(r.out << r.err);
    CHECK(r.status == 2);
    REQUIRE(r.err_lines().size() == 1);
    CHECK_THAT(r.err, StartsWith("kvq: --filter '^nomatch$' matches none of the 4 cases of "
                                 "pass.toml"));
  }
  // Nothing ran, so nothing was written.
  CHECK_FALSE(fs::exists(dir / "kvq.db"));
  // An empty --shard slice is not an error: a job array may have more tasks than cases.
  CHECK(run_kvq(dir, {"run", "pass.toml", "--shard", "5/8", "--db", "kvq.db"}).status == 0);
}

TEST_CASE("cli: report reads the last run back as table, csv and json") {
  const fs::path dir = fresh_dir("report");
  write(dir / "s.toml", kPassing);
  REQUIRE(run_kvq(dir, {"run", "s.toml", "--db", "results/kvq.db"}).status == 0);

  const Result table = run_kvq(dir, {"report", "--db", "results/kvq.db"});
  CHECK(table.status == 0);
  CHECK_THAT(table.out, StartsWith("case"));
  CHECK_THAT(table.out, Contains("quantize/b4"));

  // The default database is results/kvq.db relative to the working directory.
  const Result csv = run_kvq(dir, {"report", "last_run", "--format", "csv"});
  CHECK(csv.status == 0);
  std::istringstream lines(csv.out);
  std::string header;
  std::getline(lines, header);
  CHECK(header == "case,backend,status,max_ulp,nmse,time,time_unit");
  int rows = 0;
  for (std::string line; std::getline(lines, line);)
    rows += line.rfind("fwht/", 0) == 0 || line.rfind("quantize/", 0) == 0;
  CHECK(rows == 4);  // 4 cases x backend ref

  const Result json = run_kvq(
      dir, {"report", "--format", "json", "--sql", "SELECT name, op FROM cases ORDER BY id"});
  REQUIRE(json.status == 0);
  const nlohmann::json parsed = nlohmann::json::parse(json.out);
  REQUIRE(parsed.size() == 4);
  CHECK(parsed[0]["name"] == "fwht/n4");
  CHECK(parsed[3]["op"] == "quantize");

  const Result list = run_kvq(dir, {"report", "--list"});
  CHECK(list.status == 0);
  CHECK_THAT(list.out, Contains("last_run"));
  CHECK_THAT(list.out, Contains("failing"));

  const Result unknown = run_kvq(dir, {"report", "no_such_report"});
  CHECK(unknown.status == 2);
  CHECK_THAT(unknown.err, Contains("no_such_report"));
  const Result nodb = run_kvq(dir, {"report", "--db", "missing.db"});
  CHECK(nodb.status == 2);
  CHECK_FALSE(fs::exists(dir / "missing.db"));
}

TEST_CASE("cli: backends lists the reference as available") {
  const Result r = run_kvq(fresh_dir("backends"), {"backends"});
  CHECK(r.status == 0);
  CHECK_THAT(r.out, Contains("ref"));
  CHECK_THAT(r.out, Contains("yes"));
}
