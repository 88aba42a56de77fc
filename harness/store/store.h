// The results store: SQLite in WAL mode, schema in results/schema.sql (its version in
// PRAGMA user_version), one transaction per case so a killed run leaves only whole cases.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

struct sqlite3;

namespace kvq {

struct RunInfo {
  std::string scenario;       // path as given
  std::string scenario_hash;  // sha256 (hex) of the scenario file's bytes
  std::string command;        // the kvq command line
  std::string git_sha, host, cpu_flags, compiler, build_type, gpu;
};
// Fills git sha (of the source tree, or "unknown"), host, CPU flags, compiler, build type and
// GPU name (empty when none) for a run of `scenario_path`.
RunInfo collect_run_info(const std::string& scenario_path, const std::string& command);

struct CaseRecord {
  std::string name;         // unique within the run, e.g. "quantize/b2/G128/token/synthetic"
  std::string op;           // op or method name
  std::string params_json;  // the expanded parameters
  std::string repro;        // the one kvq command that reruns exactly this case
};

struct CheckRecord {
  std::string backend, reference;
  std::string status;  // "pass", "fail", "error", "unsupported", "skip" (backend unavailable)
  int64_t mismatches = 0;
  double max_ulp = 0.0;
  double nmse = 0.0;
  int64_t first_mismatch = -1;    // flat index, -1 when none
  std::string expected, got;      // values at the first mismatch (text), or the error message
};

struct Measurement {
  std::string backend, metric;    // metric e.g. "time", "bandwidth", "nmse", "ppl"
  double value = 0.0;
  std::string unit;               // "s", "GB/s", "ratio", ...
  int64_t repetitions = 1;
  double spread = 0.0;            // e.g. (max - min) / median over repetitions
};

// How a Store opens its database: ReadWrite creates it and its schema when absent; ReadOnly
// (reports) opens an existing kvq database read-only, lets through only statements that change
// nothing and refuses ATTACH, and also reads a database in a folder it cannot write.
enum class StoreAccess { ReadWrite, ReadOnly };

// How long each write step (the WAL switch, the schema, begin and finish of a run, each case, a
// merge) waits for another process's lock on the database before it gives up: several `kvq run`
// shards, a merge and a report may share one file, and a loaded machine can hold a lock for
// seconds. Bounded, so a database held forever fails with a message instead of hanging.
constexpr std::chrono::milliseconds kLockWait{60000};

class Store {
 public:
  // Opens or creates the database (parent folders too), enables WAL, applies the schema. Throws
  // kvq::Error naming the path on a schema version mismatch, and naming the path, the step and
  // the time waited when the lock stays taken for longer than `lock_wait`.
  explicit Store(const std::string& path, StoreAccess access = StoreAccess::ReadWrite,
                 std::chrono::milliseconds lock_wait = kLockWait);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  int64_t begin_run(const RunInfo& info);  // status "incomplete" until finish_run
  // The case, its checks and measurements in one transaction. Returns the case id.
  int64_t add_case(int64_t run_id, const CaseRecord& record, const std::vector<CheckRecord>& checks,
                   const std::vector<Measurement>& measurements);
  void finish_run(int64_t run_id, const std::string& status);  // "complete" or "failed"

  sqlite3* handle() { return db_; }
  const std::string& path() const { return path_; }

  // Calls `attempt` (one SQLite call, returning its result code) until it returns anything but
  // SQLITE_BUSY or SQLITE_LOCKED, for at most the lock wait: SQLite's busy handler waits inside
  // each call, and the loop retries the calls that return SQLITE_BUSY at once (the WAL switch
  // upgrading its read lock to a write lock). Throws kvq::Error "PATH: STEP: database is locked
  // (waited N s, the limit)" when the time is up; returns the final result code otherwise.
  int wait_for_lock(const std::string& step, const std::function<int()>& attempt);

 private:
  sqlite3* db_ = nullptr;
  std::string path_;
  std::chrono::milliseconds lock_wait_;
};

// A write transaction: BEGIN IMMEDIATE (the write lock is taken at the start, waiting for it as
// Store::wait_for_lock does; a deferred transaction upgrading later would fail at once when
// another writer holds it), rolled back on destruction unless commit() ran. `step` names it in
// errors ("begin run", "case 'x'", ...).
class WriteTransaction {
 public:
  WriteTransaction(Store& store, const std::string& step);
  ~WriteTransaction();
  WriteTransaction(const WriteTransaction&) = delete;
  WriteTransaction& operator=(const WriteTransaction&) = delete;
  void commit();

 private:
  Store& store_;
  std::string step_;
  bool open_ = true;
};

constexpr int kSchemaVersion = 1;

// The GPU name for RunInfo::gpu comes from the CUDA backend when it is built: it registers a
// provider once at start-up; without one the field stays empty.
using GpuNameProvider = std::string (*)();
void set_gpu_name_provider(GpuNameProvider provider);

// Report queries (results/*.sql, embedded at build time): name (file stem) -> SQL text.
std::vector<std::pair<std::string, std::string>> named_queries();
// results/schema.sql as embedded.
const char* schema_sql();

// The result of the last statement of `sql` that returns columns: column names and rows, every
// value as text (SQL NULL as the empty string), and each value's SQLite storage class in `types`
// (same shape as rows), so JSON can print numbers as numbers and NULL as null. A result built in
// C++ may leave `types` empty: its values are text. Throws kvq::Error with SQLite's message.
enum class CellType : uint8_t { Null, Integer, Real, Text };  // a BLOB counts as text
struct QueryResult {
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;
  std::vector<std::vector<CellType>> types;
};
QueryResult run_query(sqlite3* db, const std::string& sql);
// The same with integer parameters bound by name (e.g. {":run", 7}) in every statement that has
// them; a parameter left unbound is NULL (SQLite's default).
using QueryParameters = std::vector<std::pair<std::string, int64_t>>;
QueryResult run_query(sqlite3* db, const std::string& sql, const QueryParameters& parameters);

}  // namespace kvq
