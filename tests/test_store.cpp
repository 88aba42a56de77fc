#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "harness/io/sha256.h"
#include "harness/store/store.h"
#include "reference/error.h"
#include "tests/scratch.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

// A fresh database path per test case.
std::string fresh_db(const std::string& name) {
  const fs::path dir =
      kvq::testing::scratch_root("store") / name;
  fs::remove_all(dir);
  return (dir / "sub" / "kvq.db").string();  // parent folders do not exist yet
}

int64_t count(kvq::Store& store, const std::string& table) {
  const kvq::QueryResult r = kvq::run_query(store.handle(), "SELECT count(*) FROM " + table);
  return std::stoll(r.rows.at(0).at(0));
}

kvq::RunInfo run_info() {
  kvq::RunInfo info;
  info.scenario = "scenarios/test.toml";
  info.scenario_hash = "abc";
  info.command = "kvq run scenarios/test.toml";
  info.git_sha = "unknown";
  info.host = "host";
  return info;
}

kvq::CheckRecord check(const std::string& backend, const std::string& status) {
  kvq::CheckRecord c;
  c.backend = backend;
  c.reference = "ref";
  c.status = status;
  return c;
}

kvq::Measurement time_of(const std::string& backend, double seconds) {
  kvq::Measurement m;
  m.backend = backend;
  m.metric = "time";
  m.value = seconds;
  m.unit = "s";
  return m;
}

}  // namespace

TEST_CASE("store: a new database gets the schema, its version, WAL and foreign keys") {
  const std::string path = fresh_db("schema");
  kvq::Store store(path);
  CHECK(fs::exists(path));
  const auto tables = kvq::run_query(
      store.handle(), "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name");
  CHECK(tables.rows ==
        std::vector<std::vector<std::string>>{{"cases"}, {"checks"}, {"measurements"}, {"runs"}});
  CHECK(kvq::run_query(store.handle(), "PRAGMA user_version").rows.at(0).at(0) ==
        std::to_string(kvq::kSchemaVersion));
  CHECK(kvq::run_query(store.handle(), "PRAGMA journal_mode").rows.at(0).at(0) == "wal");
  CHECK(kvq::run_query(store.handle(), "PRAGMA foreign_keys").rows.at(0).at(0) == "1");
  // Reopening an existing database of the right version works and keeps its rows.
  const int64_t run = store.begin_run(run_info());
  kvq::Store again(path);
  CHECK(count(again, "runs") == 1);
  CHECK(run == 1);
}

TEST_CASE("store: the embedded schema is results/schema.sql byte for byte") {
  const char* root = std::getenv("KVQ_SOURCE_ROOT");
  if (!root) {
    WARN("KVQ_SOURCE_ROOT not set (run through meson test): comparison skipped");
    return;
  }
  std::ifstream in(fs::path(root) / "results" / "schema.sql", std::ios::binary);
  REQUIRE(in);
  std::stringstream text;
  text << in.rdbuf();
  CHECK(text.str() == kvq::schema_sql());
  for (const auto& [name, sql] : kvq::named_queries()) {
    std::ifstream q(fs::path(root) / "results" / (name + ".sql"), std::ios::binary);
    REQUIRE(q);
    std::stringstream qt;
    qt << q.rdbuf();
    CHECK(qt.str() == sql);
  }
}

TEST_CASE("store: a database of another schema version is refused naming both versions") {
  const std::string path = fresh_db("version");
  { kvq::Store create(path); }
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  REQUIRE(sqlite3_exec(db, "PRAGMA user_version = 7", nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(db);
  REQUIRE_THROWS_WITH(kvq::Store(path),
                      Contains(path) && Contains("schema version 7, this kvq expects " +
                                                 std::to_string(kvq::kSchemaVersion)));
}

TEST_CASE("store: runs start incomplete and finish with a status and time") {
  kvq::Store store(fresh_db("runs"));
  const int64_t run = store.begin_run(run_info());
  auto row = kvq::run_query(store.handle(), "SELECT status, finished, command FROM runs").rows;
  CHECK(row.at(0) == std::vector<std::string>{"incomplete", "", "kvq run scenarios/test.toml"});
  store.finish_run(run, "complete");
  row = kvq::run_query(store.handle(), "SELECT status, finished IS NOT NULL FROM runs").rows;
  CHECK(row.at(0) == std::vector<std::string>{"complete", "1"});
  REQUIRE_THROWS_WITH(store.finish_run(run, "done"), Contains("'complete' or 'failed'"));
  REQUIRE_THROWS_WITH(store.finish_run(run + 5, "failed"), Contains("no such run"));
}

TEST_CASE("store: add_case is one transaction, a failing insert leaves nothing") {
  kvq::Store store(fresh_db("transaction"));
  const int64_t run = store.begin_run(run_info());
  kvq::CaseRecord record{"quantize/b2", "quantize", "{\"bits\":2}", "kvq run --case quantize/b2"};
  // The second check violates the status CHECK constraint after the case and the first check
  // were inserted.
  REQUIRE_THROWS_AS(store.add_case(run, record, {check("avx2", "pass"), check("cuda", "bogus")},
                                   {time_of("avx2", 1.0)}),
                    kvq::Error);
  CHECK(count(store, "cases") == 0);
  CHECK(count(store, "checks") == 0);
  CHECK(count(store, "measurements") == 0);
  // A case of a run that does not exist violates the foreign key.
  REQUIRE_THROWS_AS(store.add_case(run + 1, record, {}, {}), kvq::Error);
  CHECK(count(store, "cases") == 0);
  // A good case goes in whole; the same name twice in one run is refused.
  const int64_t id = store.add_case(run, record, {check("avx2", "pass")}, {time_of("avx2", 1.0)});
  CHECK(id > 0);
  REQUIRE_THROWS_AS(store.add_case(run, record, {check("avx2", "pass")}, {}), kvq::Error);
  CHECK(count(store, "cases") == 1);
  CHECK(count(store, "checks") == 1);
  CHECK(count(store, "measurements") == 1);
}

TEST_CASE("store: a process killed inside a case leaves only whole cases") {
  const std::string path = fresh_db("killed");
  int64_t run = 0;
  {
    kvq::Store store(path);
    run = store.begin_run(run_info());
    store.add_case(run, {"whole", "fwht", "{}", "r"}, {check("ref", "pass")}, {});
  }
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // Start writing a second case by hand and die before COMMIT.
    kvq::Store store(path);
    sqlite3_exec(store.handle(), "BEGIN IMMEDIATE", nullptr, nullptr, nullptr);
    sqlite3_exec(store.handle(),
                 ("INSERT INTO cases (run_id, name, op, params_json, repro) VALUES (" +
                  std::to_string(run) + ", 'half', 'fwht', '{}', 'r')")
                     .c_str(),
                 nullptr, nullptr, nullptr);
    ::raise(SIGKILL);
    ::_exit(1);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  CHECK(WIFSIGNALED(status));
  kvq::Store store(path);
  CHECK(kvq::run_query(store.handle(), "SELECT name FROM cases").rows ==
        std::vector<std::vector<std::string>>{{"whole"}});
}

TEST_CASE("store: two Store objects on one file both write") {
  const std::string path = fresh_db("two");
  kvq::Store a(path);
  kvq::Store b(path);
  const int64_t ra = a.begin_run(run_info());
  const int64_t rb = b.begin_run(run_info());
  CHECK(ra != rb);
  a.add_case(ra, {"x", "fwht", "{}", "r"}, {check("ref", "pass")}, {});
  b.add_case(rb, {"x", "fwht", "{}", "r"}, {check("ref", "pass")}, {});
  a.finish_run(ra, "complete");
  b.finish_run(rb, "failed");
  CHECK(count(a, "cases") == 2);
  CHECK(count(b, "runs") == 2);
}

namespace {

// Another connection to `path` (the lock behaves as another process's: SQLite locks per file).
struct RawConnection {
  explicit RawConnection(const std::string& path) {
    fs::create_directories(fs::path(path).parent_path());
    REQUIRE(sqlite3_open(path.c_str(), &h) == SQLITE_OK);
  }
  ~RawConnection() { sqlite3_close(h); }
  void exec(const char* sql) {
    REQUIRE(sqlite3_exec(h, sql, nullptr, nullptr, nullptr) == SQLITE_OK);
  }
  sqlite3* h = nullptr;
};

// The kvq::Error message `f` throws, or "" when it throws none.
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const kvq::Error& e) {
    return e.what();
  }
  return "";
}

// The message of a write step that found the lock taken for the whole 0.2 s it may wait.
bool is_lock_timeout(const std::string& message, const std::string& path, const std::string& step) {
  return message.rfind(path + ": " + step + ": database is locked (waited ", 0) == 0 &&
         message.find("the limit is 0.2 s)") != std::string::npos;
}

}  // namespace

TEST_CASE("store: each write step that finds the lock taken names the database, step and wait") {
  using namespace std::chrono_literals;
  // Begin run, each case, finish run: another writer holds the (WAL) write lock.
  const std::string path = fresh_db("locked");
  kvq::Store store(path, kvq::StoreAccess::ReadWrite, 200ms);
  const int64_t run = store.begin_run(run_info());
  {
    RawConnection other(path);
    other.exec("BEGIN IMMEDIATE");
    const std::string begin = error_of([&] { store.begin_run(run_info()); });
    CHECK(is_lock_timeout(begin, path, "begin run"));
    const std::string add = error_of(
        [&] { store.add_case(run, {"x", "fwht", "{}", "r"}, {check("ref", "pass")}, {}); });
    CHECK(is_lock_timeout(add, path, "case 'x'"));
    const std::string finish = error_of([&] { store.finish_run(run, "complete"); });
    CHECK(is_lock_timeout(finish, path, "finish run 1"));
  }
  store.finish_run(run, "complete");  // released: the same steps go through
  CHECK(count(store, "runs") == 1);

  // Schema creation: a new (empty) WAL database, its write lock taken.
  const std::string fresh = fresh_db("locked-schema");
  RawConnection other(fresh);
  other.exec("PRAGMA journal_mode = WAL");
  other.exec("BEGIN IMMEDIATE");
  const std::string schema = error_of([&] { kvq::Store s(fresh, kvq::StoreAccess::ReadWrite, 200ms); });
  CHECK(is_lock_timeout(schema, fresh, "schema creation"));
}

TEST_CASE("store: the switch to WAL waits for another writer instead of failing at once") {
  using namespace std::chrono_literals;
  // A new (empty) database, still in rollback-journal mode, whose write lock another connection
  // holds: the switch reads the header, then upgrades, which SQLite answers at once with
  // SQLITE_BUSY.
  const std::string path = fresh_db("wal-switch");
  RawConnection other(path);
  other.exec("BEGIN IMMEDIATE");
  const std::string message =
      error_of([&] { kvq::Store s(path, kvq::StoreAccess::ReadWrite, 200ms); });
  CHECK(is_lock_timeout(message, path, "switch to WAL"));
  // The same lock released after 300 ms: a store that may wait 60 s opens once it is free.
  std::thread release([&] {
    std::this_thread::sleep_for(300ms);
    sqlite3_exec(other.h, "ROLLBACK", nullptr, nullptr, nullptr);
  });
  const std::string opened = error_of([&] {
    kvq::Store store(path);
    CHECK(kvq::run_query(store.handle(), "PRAGMA journal_mode").rows.at(0).at(0) == "wal");
    CHECK(count(store, "runs") == 0);
  });
  release.join();
  CHECK(opened == "");
}

TEST_CASE("store: named queries run on a small populated database") {
  kvq::Store store(fresh_db("queries"));
  std::set<std::string> names;
  std::map<std::string, std::string> sql;
  for (const auto& [name, text] : kvq::named_queries()) {
    names.insert(name);
    sql[name] = text;
  }
  CHECK(names == std::set<std::string>{"accuracy", "experts", "failing", "last_run",
                                       "matched_bits", "memory", "pareto", "sinks", "speedup",
                                       "vlm"});

  // An older run whose rows must not show up.
  const int64_t old_run = store.begin_run(run_info());
  store.add_case(old_run, {"old", "fwht", "{}", "r-old"}, {check("cuda", "fail")},
                 {time_of("ref", 1.0), time_of("cuda", 1.0)});
  const int64_t run = store.begin_run(run_info());
  kvq::CheckRecord fail = check("cuda", "fail");
  fail.mismatches = 3;
  fail.first_mismatch = 17;
  fail.expected = "0x1p+0 (1)";
  fail.got = "0x1.000002p+0 (1.00000012)";
  kvq::CheckRecord pass = check("avx2", "pass");
  pass.nmse = 0.0;
  store.add_case(run, {"quantize/b2", "quantize", "{}", "kvq run --case quantize/b2"}, {pass, fail},
                 {time_of("ref", 2.0), time_of("avx2", 0.5), time_of("cuda", 0.25)});
  store.finish_run(run, "complete");

  const kvq::QueryResult last = kvq::run_query(store.handle(), sql["last_run"]);
  REQUIRE(last.columns.size() >= 6);
  CHECK(last.columns[0] == "case");
  CHECK(last.columns[1] == "backend");
  // One row per backend of the newest run's case: avx2 and cuda checked, ref only timed.
  REQUIRE(last.rows.size() == 3);
  CHECK(last.rows[0][0] == "quantize/b2");
  CHECK(last.rows[0][1] == "avx2");
  CHECK(last.rows[0][2] == "pass");
  CHECK(last.rows[1][1] == "cuda");
  CHECK(last.rows[1][2] == "fail");
  CHECK(last.rows[2][1] == "ref");
  CHECK(last.rows[2][2] == "");
  CHECK(std::stod(last.rows[2][5]) == 2.0);

  const kvq::QueryResult speedup = kvq::run_query(store.handle(), sql["speedup"]);
  REQUIRE(speedup.rows.size() == 2);
  REQUIRE(speedup.columns.size() == 7);
  CHECK(speedup.columns[5] == "speedup");
  CHECK(speedup.columns[6] == "ref_run");
  CHECK(speedup.rows[0][1] == "avx2");
  CHECK(std::stod(speedup.rows[0][5]) == 4.0);
  CHECK(speedup.rows[1][1] == "cuda");
  CHECK(std::stod(speedup.rows[1][5]) == 8.0);
  CHECK(speedup.rows[1][6] == speedup.rows[0][6]);  // the newest run timed ref itself

  const kvq::QueryResult failing = kvq::run_query(store.handle(), sql["failing"]);
  REQUIRE(failing.rows.size() == 1);
  const auto column = [&](const std::string& name) {
    for (size_t i = 0; i < failing.columns.size(); ++i)
      if (failing.columns[i] == name) return failing.rows[0][i];
    FAIL("no column " << name);
    return std::string();
  };
  CHECK(column("backend") == "cuda");
  CHECK(column("first_mismatch") == "17");
  CHECK(column("expected") == "0x1p+0 (1)");
  CHECK(column("got") == "0x1.000002p+0 (1.00000012)");
  CHECK(column("repro") == "kvq run --case quantize/b2");
}

TEST_CASE("store: run_query reports SQL errors and NULL as empty text") {
  kvq::Store store(fresh_db("query_errors"));
  REQUIRE_THROWS_WITH(kvq::run_query(store.handle(), "SELECT * FROM nowhere"), Contains("nowhere"));
  const auto r = kvq::run_query(store.handle(), "SELECT NULL AS a, 1.5 AS b; -- trailing comment");
  CHECK(r.columns == std::vector<std::string>{"a", "b"});
  CHECK(r.rows == std::vector<std::vector<std::string>>{{"", "1.5"}});
}

TEST_CASE("store: collect_run_info hashes the scenario and names the machine") {
  const fs::path dir = fs::path(fresh_db("info")).parent_path();
  fs::create_directories(dir);
  const std::string scenario = (dir / "s.toml").string();
  std::ofstream(scenario, std::ios::binary) << "abc";
  kvq::set_gpu_name_provider([] { return std::string("Test GPU"); });
  kvq::RunInfo info = kvq::collect_run_info(scenario, "kvq run s.toml");
  // FIPS 180-2 example: sha256("abc").
  CHECK(info.scenario_hash == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(info.scenario == scenario);
  CHECK(info.command == "kvq run s.toml");
  CHECK(info.gpu == "Test GPU");
  CHECK(!info.host.empty());
  CHECK(!info.compiler.empty());
  CHECK((info.build_type == "release" || info.build_type == "debug"));
  CHECK((info.git_sha == "unknown" ||
         (info.git_sha.size() == 40 &&
          info.git_sha.find_first_not_of("0123456789abcdef") == std::string::npos)));
  std::istringstream flags(info.cpu_flags);
  const std::set<std::string> allowed = {"avx2",     "fma",      "avx512f",
                                         "avx512bw", "avx512dq", "avx512vl"};
  for (std::string f; flags >> f;) CHECK(allowed.count(f) == 1);
  kvq::set_gpu_name_provider(nullptr);
  CHECK(kvq::collect_run_info(scenario, "x").gpu.empty());
  REQUIRE_THROWS_WITH(kvq::collect_run_info((dir / "missing.toml").string(), "x"),
                      Contains("missing.toml"));
}

TEST_CASE("store: a file that is not a database is refused naming the path") {
  const std::string path = fresh_db("not_db");
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << std::string(4096, 'x');
  REQUIRE_THROWS_WITH(kvq::Store(path), Contains(path));
}
