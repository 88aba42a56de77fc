// The results store under a killed run and under concurrent writers (DESIGN.md "Results": one
// transaction per case; STYLE.md: SQLite's own kill tests). Runs the real `kvq run` in child
// processes ($KVQ_BIN) and reads the database afterwards with plain SQLite.
#include <sqlite3.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/kvq_process.h"

namespace fs = std::filesystem;
using kvq::testing::KvqProcess;

namespace {

fs::path fresh_dir(const std::string& name) {
  const fs::path dir =
      fs::temp_directory_path() / ("kvq_test_durability_" + std::to_string(::getpid())) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// `count` quantize cases (one per seed) on ref and avx2: two checks per case whether or not
// this CPU has AVX2 (an unavailable backend is a "skip" check).
fs::path write_scenario(const fs::path& dir, int count, int tokens) {
  const fs::path path = dir / "many.toml";
  std::ofstream out(path);
  out << "[scenario]\nbackends = [\"ref\", \"avx2\"]\n\n[[case]]\nop = \"quantize\"\n"
      << "tokens = " << tokens << "\nheads = 8\nhead_dim = 128\nbits = 2\nseed = [";
  for (int s = 1; s <= count; ++s) out << (s > 1 ? ", " : "") << s;
  out << "]\n";
  return path;
}

// A read-only connection; every query returns one integer or text.
class Db {
 public:
  explicit Db(const fs::path& path) {
    if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK)
      FAIL("cannot open " << path);
    sqlite3_busy_timeout(db_, 10000);
  }
  ~Db() { sqlite3_close(db_); }
  // The single value of `sql`; "" when it returns no row or fails.
  std::string text(const std::string& sql) const {
    sqlite3_stmt* st = nullptr;
    std::string out;
    if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
      out = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return out;
  }
  int64_t integer(const std::string& sql) const {
    const std::string t = text(sql);
    return t.empty() ? -1 : std::stoll(t);
  }

 private:
  sqlite3* db_ = nullptr;
};

// Cases committed so far, or -1 while the database or its schema does not exist yet.
int64_t committed_cases(const fs::path& db) {
  if (!fs::exists(db)) return -1;
  sqlite3* raw = nullptr;
  int64_t n = -1;
  if (sqlite3_open_v2(db.c_str(), &raw, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(raw, "SELECT count(*) FROM cases", -1, &st, nullptr) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
      n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
  }
  sqlite3_close(raw);
  return n;
}

}  // namespace

TEST_CASE("durability: a SIGKILLed run leaves only whole cases and its run marked incomplete") {
  const fs::path dir = fresh_dir("kill");
  const int total = 400;
  const fs::path scenario = write_scenario(dir, total, 2048);
  const fs::path db = dir / "kvq.db";
  // Kill at several points; each kill lands wherever the run happens to be (inside a case's
  // transaction or between two), and every run goes to the same database.
  const std::vector<int64_t> kill_after = {1, 3, 7};
  for (int64_t threshold : kill_after) {
    KvqProcess run({"run", scenario.string(), "--db", db.string()}, dir, "run");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
    int64_t baseline = -1;
    while (std::chrono::steady_clock::now() < deadline) {
      const int64_t n = committed_cases(db);
      if (baseline < 0 && n >= 0) baseline = n;  // cases of earlier (killed) runs
      if (baseline >= 0 && n - baseline >= threshold) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    run.kill_now();
    INFO("stderr of the killed run: " << run.err());
    REQUIRE(run.wait() == 128 + SIGKILL);
  }

  const Db d(db);
  CHECK(d.text("PRAGMA integrity_check") == "ok");
  CHECK(d.integer("SELECT count(*) FROM runs") == 3);
  CHECK(d.integer("SELECT count(*) FROM runs WHERE status = 'incomplete' AND finished IS NULL") ==
        3);
  for (int64_t run = 1; run <= 3; ++run) {
    const std::string r = std::to_string(run);
    const int64_t cases = d.integer("SELECT count(*) FROM cases WHERE run_id = " + r);
    INFO("run " << run << ": " << cases << " cases");
    CHECK(cases >= kill_after[static_cast<size_t>(run - 1)]);
    CHECK(cases < total);
    // Whole cases: each has both checks, and the same measurements as every other case.
    CHECK(d.integer("SELECT count(*) FROM cases c WHERE run_id = " + r +
                    " AND (SELECT count(*) FROM checks WHERE case_id = c.id) != 2") == 0);
    CHECK(d.integer("SELECT count(DISTINCT (SELECT count(*) FROM measurements WHERE case_id = "
                    "c.id)) FROM cases c WHERE run_id = " + r) == 1);
    CHECK(d.integer("SELECT min((SELECT count(*) FROM measurements WHERE case_id = c.id)) FROM "
                    "cases c WHERE run_id = " + r) >= 1);
    // A prefix of the expansion order: the cases of seeds 1..N, none skipped.
    CHECK(d.integer("SELECT count(*) FROM cases WHERE run_id = " + r + " AND name = 'quantize/s' "
                    "|| (SELECT count(*) FROM cases e WHERE e.run_id = " + r +
                    " AND e.id <= cases.id)") == cases);
  }
  // No orphans: every check and measurement belongs to a case.
  CHECK(d.integer("SELECT count(*) FROM checks WHERE case_id NOT IN (SELECT id FROM cases)") ==
        0);
  CHECK(d.integer("SELECT count(*) FROM measurements WHERE case_id NOT IN "
                  "(SELECT id FROM cases)") == 0);

  // The database stays usable: a later run on it completes.
  const fs::path small = dir / "small";
  fs::create_directories(small);
  const auto done = kvq::testing::run_kvq(
      {"run", write_scenario(small, 3, 16).string(), "--db", db.string()}, dir, "after");
  INFO("stderr: " << done.err);
  CHECK(done.status == 0);
  const Db after(db);
  CHECK(after.text("SELECT status FROM runs WHERE id = 4") == "complete");
  CHECK(after.integer("SELECT count(*) FROM cases WHERE run_id = 4") == 3);
}

TEST_CASE("durability: two kvq run processes writing one database concurrently lose no rows") {
  const fs::path dir = fresh_dir("concurrent");
  const int total = 60;
  const fs::path scenario = write_scenario(dir, total, 64);
  // Both start on a database that does not exist yet, so they also race to create the schema.
  const fs::path db = dir / "shared.db";
  KvqProcess a({"run", scenario.string(), "--db", db.string()}, dir, "a");
  KvqProcess b({"run", scenario.string(), "--db", db.string()}, dir, "b");
  const int status_a = a.wait(), status_b = b.wait();
  INFO("a: " << a.err() << "\nb: " << b.err());
  CHECK(status_a == 0);
  CHECK(status_b == 0);

  const Db d(db);
  CHECK(d.text("PRAGMA integrity_check") == "ok");
  CHECK(d.integer("SELECT count(*) FROM runs WHERE status = 'complete'") == 2);
  CHECK(d.integer("SELECT count(*) FROM runs") == 2);
  for (int run = 1; run <= 2; ++run) {
    const std::string r = std::to_string(run);
    CHECK(d.integer("SELECT count(*) FROM cases WHERE run_id = " + r) == total);
    CHECK(d.integer("SELECT count(DISTINCT name) FROM cases WHERE run_id = " + r) == total);
    CHECK(d.integer("SELECT count(*) FROM checks k JOIN cases c ON k.case_id = c.id WHERE "
                    "c.run_id = " + r) == 2 * total);
  }
  // Both runs wrote the same cases, so the same statuses, whichever interleaving happened.
  CHECK(d.integer("SELECT count(*) FROM checks k1 JOIN cases c1 ON k1.case_id = c1.id "
                  "JOIN cases c2 ON c2.name = c1.name AND c2.run_id = 2 "
                  "JOIN checks k2 ON k2.case_id = c2.id AND k2.backend = k1.backend "
                  "WHERE c1.run_id = 1 AND k1.status = k2.status") == 2 * total);
}
