// `kvq run --shard i/n` and `kvq merge` (harness/store/merge.h): shards of a sweep merged into one
// database hold exactly the cases, checks and measurements of one unsharded run; merging a run
// twice skips it. Runs the real CLI ($KVQ_BIN) and reads the databases with plain SQLite.
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/kvq_process.h"
#include "tests/scratch.h"

namespace fs = std::filesystem;
using kvq::testing::run_kvq;

namespace {

fs::path fresh_dir(const std::string& name) {
  const fs::path dir =
      kvq::testing::scratch_root("merge") / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// 21 cases (odd, so the two shards differ in size) over three ops; backends this CPU lacks give
// "skip" checks, deterministic all the same.
constexpr int kCases = 21;
fs::path write_scenario(const fs::path& dir) {
  const fs::path path = dir / "sweep.toml";
  std::ofstream(path) << R"([scenario]
backends = ["ref", "avx2", "avx512"]

[[case]]
op = "fwht"
tokens = 3
n = [4, 16, 64]

[[case]]
op = "quantize"
tokens = [7, 33]
heads = 2
head_dim = 64
group = 32
bits = [1, 2, 4, 8]
axis = ["token", "channel"]

[[case]]
op = "token_absmax"
tokens = 9
hidden = [64, 256]
)";
  return path;
}

// Every row of `sql` as one '|'-joined string, sorted (a multiset to compare databases by).
std::vector<std::string> rows(const fs::path& db, const std::string& sql) {
  sqlite3* raw = nullptr;
  std::vector<std::string> out;
  REQUIRE(sqlite3_open_v2(db.c_str(), &raw, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(raw, sql.c_str(), -1, &st, nullptr) == SQLITE_OK);
  while (sqlite3_step(st) == SQLITE_ROW) {
    std::string row;
    for (int i = 0; i < sqlite3_column_count(st); ++i) {
      const auto* t = sqlite3_column_text(st, i);
      row += (i ? "|" : "") + std::string(t ? reinterpret_cast<const char*>(t) : "NULL");
    }
    out.push_back(row);
  }
  sqlite3_finalize(st);
  sqlite3_close(raw);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> joined(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  std::sort(a.begin(), a.end());
  return a;
}

const char* kChecks =
    "SELECT c.name, k.backend, k.reference, k.status, k.mismatches, k.max_ulp, k.first_mismatch, "
    "k.expected, k.got FROM checks k JOIN cases c ON k.case_id = c.id";
const char* kChecksWithRun =
    "SELECT r.command, r.started, c.name, c.params_json, k.backend, k.status, k.expected "
    "FROM checks k JOIN cases c ON k.case_id = c.id JOIN runs r ON c.run_id = r.id";
const char* kMeasurementsWithRun =
    "SELECT r.command, c.name, m.backend, m.metric, m.unit, m.repetitions, m.value "
    "FROM measurements m JOIN cases c ON m.case_id = c.id JOIN runs r ON c.run_id = r.id";

void run_ok(const std::vector<std::string>& args, const fs::path& dir) {
  const auto r = run_kvq(args, dir);
  INFO("kvq " << args[0] << " " << args[1] << "\nstderr: " << r.err << "\nstdout: " << r.out);
  REQUIRE(r.status == 0);
}

}  // namespace

TEST_CASE("merge: shards 0/2 and 1/2 merged equal one unsharded run, case for case") {
  const fs::path dir = fresh_dir("shards");
  const std::string scenario = write_scenario(dir).string();
  const fs::path full = dir / "full.db", s0 = dir / "s0.db", s1 = dir / "s1.db",
                 all = dir / "out" / "all.db";
  run_ok({"run", scenario, "--db", full.string()}, dir);
  run_ok({"run", scenario, "--db", s0.string(), "--shard", "0/2"}, dir);
  run_ok({"run", scenario, "--db", s1.string(), "--shard", "1/2"}, dir);

  // The slice: expansion index i mod 2 (cases of the full run in id order).
  const std::vector<std::string> names =
      rows(full, "SELECT printf('%04d', id) || ' ' || name FROM cases ORDER BY id");
  REQUIRE(names.size() == kCases);
  std::vector<std::string> even, odd;
  for (size_t i = 0; i < names.size(); ++i)
    (i % 2 == 0 ? even : odd).push_back(names[i].substr(5));
  std::sort(even.begin(), even.end());
  std::sort(odd.begin(), odd.end());
  CHECK(rows(s0, "SELECT name FROM cases") == even);
  CHECK(rows(s1, "SELECT name FROM cases") == odd);

  const auto merged = run_kvq({"merge", s0.string(), s1.string(), "-o", all.string()}, dir);
  INFO("merge stdout: " << merged.out << "stderr: " << merged.err);
  REQUIRE(merged.status == 0);
  CHECK(merged.out.find("merged 2 runs (21 cases") != std::string::npos);

  // Case for case: names, statuses and the first mismatch of every check, as one run had them.
  CHECK(rows(all, kChecks) == rows(full, kChecks));
  CHECK(rows(all, "SELECT name, op, params_json FROM cases") ==
        rows(full, "SELECT name, op, params_json FROM cases"));
  // Every row kept its run (command, start time) and its case: the ids were remapped together.
  CHECK(rows(all, kChecksWithRun) == joined(rows(s0, kChecksWithRun), rows(s1, kChecksWithRun)));
  CHECK(rows(all, kMeasurementsWithRun) ==
        joined(rows(s0, kMeasurementsWithRun), rows(s1, kMeasurementsWithRun)));
  CHECK(rows(all, "SELECT status, git_sha, host, scenario_hash, command FROM runs") ==
        joined(rows(s0, "SELECT status, git_sha, host, scenario_hash, command FROM runs"),
               rows(s1, "SELECT status, git_sha, host, scenario_hash, command FROM runs")));
  CHECK(rows(all, "PRAGMA integrity_check") == std::vector<std::string>{"ok"});
  CHECK(rows(all, "PRAGMA foreign_key_check").empty());

  // The same run again: skipped and said so; nothing changes.
  const std::vector<std::string> before = rows(all, kChecksWithRun);
  const auto again = run_kvq({"merge", s1.string(), s0.string(), "-o", all.string()}, dir);
  INFO("second merge stdout: " << again.out);
  CHECK(again.status == 0);
  CHECK(again.out.find("s1.db: run 1") != std::string::npos);
  CHECK(again.out.find("skipped") != std::string::npos);
  CHECK(again.out.find("merged 0 runs (0 cases, 0 checks, 0 measurements)") != std::string::npos);
  CHECK(again.out.find("2 runs skipped") != std::string::npos);
  CHECK(rows(all, kChecksWithRun) == before);

  // An unsharded run is another run: merged beside the shards.
  run_ok({"merge", full.string(), "-o", all.string()}, dir);
  CHECK(rows(all, "SELECT count(*) FROM runs") == std::vector<std::string>{"3"});
  CHECK(rows(all, "SELECT count(*) FROM cases") == std::vector<std::string>{"42"});
}

TEST_CASE("merge: shards i/3 partition the cases; a bad --shard is one line, exit 2") {
  const fs::path dir = fresh_dir("three");
  const std::string scenario = write_scenario(dir).string();
  std::vector<std::string> all;
  for (int i = 0; i < 3; ++i) {
    const fs::path db = dir / ("s" + std::to_string(i) + ".db");
    run_ok({"run", scenario, "--db", db.string(), "--shard", std::to_string(i) + "/3"}, dir);
    const std::vector<std::string> names = rows(db, "SELECT name FROM cases");
    CHECK(names.size() == 7);
    all = joined(all, names);
  }
  CHECK(std::adjacent_find(all.begin(), all.end()) == all.end());  // no case twice
  CHECK(all.size() == kCases);

  for (const std::string bad : {"3/3", "1", "-1/2", "0/0", "a/b", "1/2/3"}) {
    const auto r = run_kvq({"run", scenario, "--db", (dir / "bad.db").string(), "--shard", bad},
                           dir);
    INFO("--shard " << bad << ": " << r.err);
    CHECK(r.status == 2);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK(r.err.find("--shard '" + bad + "'") != std::string::npos);
    CHECK(!fs::exists(dir / "bad.db"));
  }
}

TEST_CASE("merge: refuses inputs that are not kvq results stores, naming them") {
  const fs::path dir = fresh_dir("refuse");
  const fs::path text = dir / "notes.txt", foreign = dir / "foreign.db", out = dir / "out.db";
  std::ofstream(text) << "not a database, but long enough to look like a header...............\n"
                      << std::string(200, 'x');
  {
    sqlite3* raw = nullptr;
    REQUIRE(sqlite3_open(foreign.c_str(), &raw) == SQLITE_OK);
    REQUIRE(sqlite3_exec(raw, "CREATE TABLE runs (id INTEGER); PRAGMA user_version = 7", nullptr,
                         nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(raw);
  }
  struct Case {
    std::vector<std::string> args;
    std::string words;
  };
  const std::vector<Case> cases = {
      {{"merge", (dir / "absent.db").string(), "-o", out.string()}, "absent.db"},
      {{"merge", text.string(), "-o", out.string()}, "notes.txt"},
      {{"merge", foreign.string(), "-o", out.string()}, "user_version 7"},
      {{"merge", foreign.string()}, "-o"},
      {{"merge", "-o", out.string()}, "no input"},
  };
  for (const Case& c : cases) {
    const auto r = run_kvq(c.args, dir);
    INFO("kvq merge ... " << c.words << ": " << r.err);
    CHECK(r.status == 2);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK(r.err.find(c.words) != std::string::npos);
  }
  // The output itself as an input is refused before anything is written.
  const fs::path scenario = write_scenario(dir);
  run_ok({"run", scenario.string(), "--db", out.string(), "--filter", "^fwht"}, dir);
  const auto self = run_kvq({"merge", out.string(), "-o", out.string()}, dir);
  CHECK(self.status == 2);
  CHECK(self.err.find("is the output") != std::string::npos);
  CHECK(rows(out, "SELECT count(*) FROM runs") == std::vector<std::string>{"1"});
}
