// The results store under a killed run and under concurrent writers (docs/design.md "Results": one
// transaction per case; STYLE.md: SQLite's own kill tests). Runs the real `kvq run` in child
// processes ($KVQ_BIN), under a load the test makes itself for the concurrent case, and reads
// the database afterwards with plain SQLite.
#include <sqlite3.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tests/kvq_process.h"
#include "tests/scratch.h"

namespace fs = std::filesystem;
using kvq::testing::KvqProcess;

namespace {

fs::path fresh_dir(const std::string& name) {
  const fs::path dir =
      kvq::testing::scratch_root("durability") / name;
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

// A niced busy loop on every core, from construction to destruction. Each is a child process
// ended by its PID (SIGKILL, then reaped); each also exits by itself after `limit`, so none
// outlives a test that crashed.
class CpuLoad {
 public:
  explicit CpuLoad(std::chrono::seconds limit) {
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    for (unsigned i = 0; i < cores; ++i) {
      const pid_t pid = ::fork();
      if (pid < 0) FAIL("fork failed");
      if (pid == 0) {
        (void)::nice(19);  // the machine is shared: the load yields to everyone else first
        const auto end = std::chrono::steady_clock::now() + limit;
        volatile uint64_t sink = 0;
        while (std::chrono::steady_clock::now() < end)
          for (int k = 0; k < 1000000; ++k) sink = sink + static_cast<uint64_t>(k);
        ::_exit(0);
      }
      pids_.push_back(pid);
    }
  }
  ~CpuLoad() {
    for (pid_t pid : pids_) ::kill(pid, SIGKILL);
    for (pid_t pid : pids_) ::waitpid(pid, nullptr, 0);
  }
  CpuLoad(const CpuLoad&) = delete;
  CpuLoad& operator=(const CpuLoad&) = delete;

 private:
  std::vector<pid_t> pids_;
};

// Another writer, as `kvq merge` is one: a child process that takes the database's write lock
// (BEGIN IMMEDIATE) for 30 ms, releases it for 30 ms, and again, writing nothing. It creates the
// database file and holds the lock before the constructor returns, so the `kvq run` processes
// meet it from their first step (the WAL switch) on. Ended by its PID; exits by itself after
// `limit`.
class LockHolder {
 public:
  LockHolder(const fs::path& db, std::chrono::seconds limit) {
    int ready[2];
    if (::pipe(ready) != 0) FAIL("pipe failed");
    pid_ = ::fork();
    if (pid_ < 0) FAIL("fork failed");
    if (pid_ == 0) {
      ::close(ready[0]);
      sqlite3* h = nullptr;
      if (sqlite3_open(db.c_str(), &h) != SQLITE_OK) ::_exit(3);
      sqlite3_busy_timeout(h, 60000);
      const auto end = std::chrono::steady_clock::now() + limit;
      for (bool first = true; std::chrono::steady_clock::now() < end; first = false) {
        if (sqlite3_exec(h, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK) {
          if (first && ::write(ready[1], "x", 1) != 1) ::_exit(4);
          std::this_thread::sleep_for(std::chrono::milliseconds(30));
          sqlite3_exec(h, "ROLLBACK", nullptr, nullptr, nullptr);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(30));
      }
      ::_exit(0);
    }
    ::close(ready[1]);
    char byte = 0;
    const bool holding = ::read(ready[0], &byte, 1) == 1;
    ::close(ready[0]);
    if (!holding) FAIL("the lock holder did not take the lock");
  }
  ~LockHolder() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  LockHolder(const LockHolder&) = delete;
  LockHolder& operator=(const LockHolder&) = delete;

 private:
  pid_t pid_ = -1;
};

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

TEST_CASE("durability: concurrent kvq run writers on a busy machine lose no run and no row") {
  // The load is the test's own, so it cannot pass by luck on an idle machine: a niced busy loop
  // on every core for the whole test, a LockHolder taking the write lock in bursts, and
  // kWriters `kvq run` processes started together on one new database (they race for the WAL
  // switch and the schema too), for kRounds fresh databases. Every process is ended by its PID.
  constexpr int kWriters = 5, kRounds = 2, kTotal = 24;
  const fs::path dir = fresh_dir("concurrent");
  const fs::path scenario = write_scenario(dir, kTotal, 64);
  const CpuLoad load(std::chrono::minutes(5));
  for (int round = 0; round < kRounds; ++round) {
    const fs::path db = dir / ("shared" + std::to_string(round) + ".db");
    const LockHolder holder(db, std::chrono::minutes(5));
    std::vector<std::unique_ptr<KvqProcess>> writers;
    for (int w = 0; w < kWriters; ++w)
      writers.push_back(std::make_unique<KvqProcess>(
          std::vector<std::string>{"run", scenario.string(), "--db", db.string()}, dir,
          "w" + std::to_string(w)));
    for (auto& w : writers) {
      const int status = w->wait();
      INFO("round " << round << ", stderr: " << w->err());
      CHECK(status == 0);
    }
    INFO("round " << round);
    const Db d(db);
    CHECK(d.text("PRAGMA integrity_check") == "ok");
    CHECK(d.integer("SELECT count(*) FROM runs WHERE status = 'complete'") == kWriters);
    CHECK(d.integer("SELECT count(*) FROM runs") == kWriters);
    for (int run = 1; run <= kWriters; ++run) {
      const std::string r = std::to_string(run);
      CHECK(d.integer("SELECT count(*) FROM cases WHERE run_id = " + r) == kTotal);
      CHECK(d.integer("SELECT count(DISTINCT name) FROM cases WHERE run_id = " + r) == kTotal);
      CHECK(d.integer("SELECT count(*) FROM checks k JOIN cases c ON k.case_id = c.id WHERE "
                      "c.run_id = " + r) == 2 * kTotal);
    }
    // Every run wrote the same cases, so the same statuses, whichever interleaving happened.
    CHECK(d.integer("SELECT count(*) FROM checks k1 JOIN cases c1 ON k1.case_id = c1.id "
                    "JOIN cases c2 ON c2.name = c1.name AND c2.run_id != c1.run_id "
                    "JOIN checks k2 ON k2.case_id = c2.id AND k2.backend = k1.backend "
                    "WHERE k1.status = k2.status") == kWriters * (kWriters - 1) * 2 * kTotal);
  }
}
