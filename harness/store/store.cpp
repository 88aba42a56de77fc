#include "harness/store/store.h"

#include <sqlite3.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <thread>

#include "harness/io/sha256.h"
#include "reference/error.h"
#include "results_sql.h"  // generated from results/*.sql by harness/store/embed_sql.py

#ifndef KVQ_SOURCE_ROOT
#define KVQ_SOURCE_ROOT "."
#endif

namespace kvq {
namespace {

GpuNameProvider g_gpu_name_provider = nullptr;

// One prepared statement, finalized on scope exit.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql, const std::string& where) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) != SQLITE_OK)
      throw Error(where + ": " + sqlite3_errmsg(db));
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& text(int i, const std::string& v) {
    check(sqlite3_bind_text(stmt_, i, v.c_str(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
    return *this;
  }
  Statement& integer(int i, int64_t v) {
    check(sqlite3_bind_int64(stmt_, i, v));
    return *this;
  }
  Statement& real(int i, double v) {
    check(sqlite3_bind_double(stmt_, i, v));
    return *this;
  }
  // Runs a statement that returns no rows.
  void run(const std::string& where) {
    const int rc = sqlite3_step(stmt_);
    if (rc != SQLITE_DONE) throw Error(where + ": " + sqlite3_errmsg(db_));
  }
  sqlite3_stmt* get() { return stmt_; }

 private:
  void check(int rc) {
    if (rc != SQLITE_OK) throw Error(std::string("sqlite bind: ") + sqlite3_errmsg(db_));
  }
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
};

void exec(sqlite3* db, const char* sql, const std::string& where) {
  char* message = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &message) != SQLITE_OK) {
    const std::string text = message ? message : sqlite3_errmsg(db);
    sqlite3_free(message);
    throw Error(where + ": " + text);
  }
}

int64_t pragma_int(sqlite3* db, const char* sql, const std::string& where) {
  Statement st(db, sql, where);
  if (sqlite3_step(st.get()) != SQLITE_ROW) throw Error(where + ": " + sqlite3_errmsg(db));
  return sqlite3_column_int64(st.get(), 0);
}

std::string command_output(const std::string& command) {
  std::string out;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) return out;
  std::array<char, 256> buffer{};
  while (std::fgets(buffer.data(), buffer.size(), pipe)) out += buffer.data();
  if (::pclose(pipe) != 0) return "";
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

std::string git_sha() {
  const std::string sha = command_output("git -C '" KVQ_SOURCE_ROOT "' rev-parse HEAD 2>/dev/null");
  if (sha.size() != 40 || sha.find_first_not_of("0123456789abcdef") != std::string::npos)
    return "unknown";
  return sha;
}

// The instruction-set flags the backends dispatch on, in a fixed order.
std::string cpu_flags() {
  static const char* kRelevant[] = {"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"};
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  std::set<std::string> present;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::istringstream words(line.substr(colon + 1));
    for (std::string w; words >> w;) present.insert(w);
    break;  // the first processor's flags
  }
  std::string out;
  for (const char* flag : kRelevant)
    if (present.count(flag)) {
      if (!out.empty()) out += ' ';
      out += flag;
    }
  return out;
}

std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "unknown";
  return name;
}

std::string compiler() {
#if defined(__clang__)
  return std::string("clang ") + __VERSION__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#else
  return __VERSION__;
#endif
}

}  // namespace

int Store::wait_for_lock(const std::string& step, const std::function<int()>& attempt) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now(), deadline = start + lock_wait_;
  for (int tries = 0;; ++tries) {
    // The busy handler waits at most until the deadline, so the whole step stays bounded.
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
    sqlite3_busy_timeout(db_, static_cast<int>(std::max<int64_t>(left.count(), 0)));
    const int rc = attempt();
    const int primary = rc & 0xff;
    if (primary != SQLITE_BUSY && primary != SQLITE_LOCKED) {
      sqlite3_busy_timeout(db_, static_cast<int>(lock_wait_.count()));
      return rc;
    }
    if (clock::now() >= deadline) {
      const double waited = std::chrono::duration<double>(clock::now() - start).count();
      char text[160];
      std::snprintf(text, sizeof text,
                    ": database is locked (waited %.1f s for another process's lock, the limit "
                    "is %.1f s)",
                    waited, std::chrono::duration<double>(lock_wait_).count());
      throw Error(path_ + ": " + step + text);
    }
    // Called at once with SQLITE_BUSY: back off 1, 2, 4 .. 64 ms before the next try.
    std::this_thread::sleep_for(std::chrono::milliseconds(1 << std::min(tries, 6)));
  }
}

WriteTransaction::WriteTransaction(Store& store, const std::string& step)
    : store_(store), step_(step) {
  sqlite3* db = store_.handle();
  if (store_.wait_for_lock(step_, [&] {
        return sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr);
      }) != SQLITE_OK)
    throw Error(store_.path() + ": " + step_ + ": " + sqlite3_errmsg(db));
}

WriteTransaction::~WriteTransaction() {
  if (open_) sqlite3_exec(store_.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
}

void WriteTransaction::commit() {
  // In WAL mode COMMIT takes no further lock; without WAL (a filesystem that refuses it) it
  // waits for readers, and a COMMIT that returned SQLITE_BUSY may be retried.
  sqlite3* db = store_.handle();
  if (store_.wait_for_lock(step_ + " (commit)", [&] {
        return sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
      }) != SQLITE_OK)
    throw Error(store_.path() + ": " + step_ + ": " + sqlite3_errmsg(db));
  open_ = false;
}

void set_gpu_name_provider(GpuNameProvider provider) {
  g_gpu_name_provider = provider;
}

RunInfo collect_run_info(const std::string& scenario_path, const std::string& command) {
  RunInfo info;
  info.scenario = scenario_path;
  info.scenario_hash = scenario_path.empty() ? "" : sha256_file(scenario_path);
  info.command = command;
  info.git_sha = git_sha();
  info.host = host_name();
  info.cpu_flags = cpu_flags();
  info.compiler = compiler();
#ifdef NDEBUG
  info.build_type = "release";
#else
  info.build_type = "debug";
#endif
  info.gpu = g_gpu_name_provider ? g_gpu_name_provider() : "";
  return info;
}

namespace {

// "file:" URI of a path for sqlite3_open_v2 with SQLITE_OPEN_URI ('%', '?' and '#' escaped).
std::string file_uri(const std::string& path, const char* query) {
  std::string uri = "file:";
  for (const char c : path) {
    if (c == '%' || c == '?' || c == '#') {
      char hex[4];
      std::snprintf(hex, sizeof hex, "%%%02X", static_cast<unsigned char>(c));
      uri += hex;
    } else {
      uri += c;
    }
  }
  return uri + "?" + query;
}

// Reports read only: no ATTACH (it would open or create other files), no DETACH.
int deny_attach(void*, int action, const char*, const char*, const char*, const char*) {
  return action == SQLITE_ATTACH || action == SQLITE_DETACH ? SQLITE_DENY : SQLITE_OK;
}

// Opens `path` read-only. A WAL database whose -wal and -shm files are gone (closed cleanly) in a
// folder this process cannot write cannot create them: then it is read as immutable, which is
// safe there because no writer can append to a WAL it cannot create either.
sqlite3* open_read_only(const std::string& path) {
  for (const char* query : {"mode=ro", "immutable=1"}) {
    sqlite3* db = nullptr;
    const int rc = sqlite3_open_v2(file_uri(path, query).c_str(), &db,
                                   SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, nullptr);
    std::string why = db ? sqlite3_errmsg(db) : "out of memory";
    if (rc == SQLITE_OK) {
      sqlite3_busy_timeout(db, 10000);
      // A first read opens the WAL; it fails here when the folder is read-only.
      if (sqlite3_exec(db, "SELECT count(*) FROM sqlite_master", nullptr, nullptr, nullptr) ==
          SQLITE_OK)
        return db;
      why = sqlite3_errmsg(db);
    }
    sqlite3_close(db);
    if (std::string(query) == "immutable=1")
      throw Error(path + ": cannot open database read-only (" + why + ")");
  }
  return nullptr;
}

}  // namespace

Store::Store(const std::string& path, StoreAccess access, std::chrono::milliseconds lock_wait)
    : path_(path), lock_wait_(lock_wait) {
  if (access == StoreAccess::ReadOnly) {
    db_ = open_read_only(path);
    try {
      exec(db_, "PRAGMA query_only = ON", path);
      sqlite3_set_authorizer(db_, deny_attach, nullptr);
      const int64_t version = pragma_int(db_, "PRAGMA user_version", path);
      if (version != kSchemaVersion)
        throw Error(path + ": schema version " + std::to_string(version) + ", this kvq expects " +
                    std::to_string(kSchemaVersion) +
                    (version == 0 ? " (not a kvq results database)" : ""));
    } catch (...) {
      sqlite3_close(db_);
      db_ = nullptr;
      throw;
    }
    return;
  }
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty() && path != ":memory:") {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec)
      throw Error(path + ": cannot create folder " + parent.string() + " (" + ec.message() + ")");
  }
  if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
      SQLITE_OK) {
    const std::string why = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    throw Error(path + ": cannot open database (" + why + ")");
  }
  try {
    sqlite3_busy_timeout(db_, static_cast<int>(lock_wait_.count()));
    exec(db_, "PRAGMA foreign_keys = ON", path);
    const auto check_version = [&](int64_t version) {
      if (version != 0 && version != kSchemaVersion)
        throw Error(path + ": schema version " + std::to_string(version) + ", this kvq expects " +
                    std::to_string(kSchemaVersion));
    };
    // The version and the tables in one statement, so one snapshot: read apart, another process
    // creating the schema in between would make a new kvq database look like a foreign one.
    int64_t found = 0, tables = 0;
    const auto read_version = [&] {
      Statement st(db_,
                   "SELECT (SELECT user_version FROM pragma_user_version), (SELECT count(*) FROM "
                   "sqlite_master WHERE name NOT LIKE 'sqlite_%')",
                   path);
      const int rc = sqlite3_step(st.get());
      if (rc == SQLITE_ROW) {
        found = sqlite3_column_int64(st.get(), 0);
        tables = sqlite3_column_int64(st.get(), 1);
      }
      return rc == SQLITE_ROW ? SQLITE_OK : rc;
    };
    if (wait_for_lock("reading the schema version", read_version) != SQLITE_OK)
      throw Error(path + ": " + sqlite3_errmsg(db_));
    check_version(found);  // before anything changes a database of another version
    // Version 0 with tables of its own is some other program's database: adding kvq's tables
    // (and WAL mode) beside them would change a file kvq does not own.
    if (found == 0 && tables > 0)
      throw Error(path + ": an SQLite database that is not a kvq results store (it has tables "
                  "of its own and no kvq schema version); give a new or kvq database");
    // The switch to WAL reads the header, then upgrades to a write lock: SQLite answers
    // SQLITE_BUSY at once, without its busy handler, when another process writes meanwhile.
    const auto switch_to_wal = [&] {
      Statement wal(db_, "PRAGMA journal_mode = WAL", path);
      const int rc = sqlite3_step(wal.get());
      return rc == SQLITE_ROW ? SQLITE_OK : rc;
    };
    if (wait_for_lock("switch to WAL", switch_to_wal) != SQLITE_OK)
      throw Error(path + ": switch to WAL: " + sqlite3_errmsg(db_));
    if (found == 0) {
      // Another process may be creating the schema at the same moment: decide under the lock.
      WriteTransaction tx(*this, "schema creation");
      const int64_t version = pragma_int(db_, "PRAGMA user_version", path);
      check_version(version);
      if (version == 0) {
        exec(db_, embedded::kSchemaSql, path + ": schema");
        exec(db_, ("PRAGMA user_version = " + std::to_string(kSchemaVersion)).c_str(), path);
      }
      tx.commit();
    }
  } catch (...) {
    sqlite3_close(db_);
    db_ = nullptr;
    throw;
  }
}

Store::~Store() {
  sqlite3_close(db_);
}

int64_t Store::begin_run(const RunInfo& info) {
  WriteTransaction tx(*this, "begin run");
  Statement st(db_,
               "INSERT INTO runs (started, status, git_sha, host, cpu_flags, compiler, "
               "build_type, gpu, scenario, scenario_hash, command) VALUES "
               "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'incomplete', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               path_ + ": begin_run");
  st.text(1, info.git_sha).text(2, info.host).text(3, info.cpu_flags).text(4, info.compiler);
  st.text(5, info.build_type).text(6, info.gpu).text(7, info.scenario);
  st.text(8, info.scenario_hash).text(9, info.command);
  st.run(path_ + ": begin_run");
  const int64_t id = sqlite3_last_insert_rowid(db_);
  tx.commit();
  return id;
}

int64_t Store::add_case(int64_t run_id, const CaseRecord& record,
                        const std::vector<CheckRecord>& checks,
                        const std::vector<Measurement>& measurements) {
  const std::string where = path_ + ": case '" + record.name + "'";
  WriteTransaction tx(*this, "case '" + record.name + "'");
  Statement c(db_,
              "INSERT INTO cases (run_id, name, op, params_json, repro) VALUES (?, ?, ?, ?, ?)",
              where);
  c.integer(1, run_id).text(2, record.name).text(3, record.op).text(4, record.params_json);
  c.text(5, record.repro).run(where);
  const int64_t case_id = sqlite3_last_insert_rowid(db_);
  for (const CheckRecord& k : checks) {
    Statement st(db_,
                 "INSERT INTO checks (case_id, backend, reference, status, mismatches, max_ulp, "
                 "nmse, first_mismatch, expected, got) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 where);
    st.integer(1, case_id).text(2, k.backend).text(3, k.reference).text(4, k.status);
    st.integer(5, k.mismatches).real(6, k.max_ulp).real(7, k.nmse).integer(8, k.first_mismatch);
    st.text(9, k.expected).text(10, k.got).run(where + ", check of '" + k.backend + "'");
  }
  for (const Measurement& m : measurements) {
    Statement st(db_,
                 "INSERT INTO measurements (case_id, backend, metric, value, unit, repetitions, "
                 "spread) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 where);
    st.integer(1, case_id).text(2, m.backend).text(3, m.metric).real(4, m.value).text(5, m.unit);
    st.integer(6, m.repetitions).real(7, m.spread);
    st.run(where + ", measurement '" + m.metric + "' of '" + m.backend + "'");
  }
  tx.commit();
  return case_id;
}

void Store::finish_run(int64_t run_id, const std::string& status) {
  const std::string where = path_ + ": run " + std::to_string(run_id);
  if (status != "complete" && status != "failed")
    throw Error(where + ": finish status must be 'complete' or 'failed', got '" + status + "'");
  WriteTransaction tx(*this, "finish run " + std::to_string(run_id));
  Statement st(db_,
               "UPDATE runs SET status = ?, finished = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
               "WHERE id = ?",
               where);
  st.text(1, status).integer(2, run_id).run(where);
  if (sqlite3_changes(db_) != 1) throw Error(where + ": no such run");
  tx.commit();
}

std::vector<std::pair<std::string, std::string>> named_queries() {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& q : embedded::kNamedQueries) out.emplace_back(q.name, q.sql);
  return out;
}

const char* schema_sql() {
  return embedded::kSchemaSql;
}

QueryResult run_query(sqlite3* db, const std::string& sql) {
  return run_query(db, sql, {});
}

QueryResult run_query(sqlite3* db, const std::string& sql, const QueryParameters& parameters) {
  QueryResult result;
  const char* next = sql.c_str();
  while (next && *next) {
    sqlite3_stmt* raw = nullptr;
    const char* tail = nullptr;
    if (sqlite3_prepare_v2(db, next, -1, &raw, &tail) != SQLITE_OK)
      throw Error(std::string("query: ") + (sqlite3_errcode(db) == SQLITE_AUTH
                                                ? "ATTACH and DETACH are refused (reports read "
                                                  "the results database only)"
                                                : sqlite3_errmsg(db)));
    next = tail;
    if (!raw) continue;  // whitespace or a comment
    std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> st(raw, sqlite3_finalize);
    // A read-only connection (reports) runs only statements that change no database file.
    if (sqlite3_db_readonly(db, "main") == 1 && !sqlite3_stmt_readonly(raw))
      throw Error(std::string("query: the results database is open read-only; '") +
                  sqlite3_sql(raw) + "' would change it (reports run SELECT statements only)");
    for (const auto& [name, value] : parameters)
      if (const int index = sqlite3_bind_parameter_index(raw, name.c_str()); index > 0)
        sqlite3_bind_int64(raw, index, value);
    const int ncol = sqlite3_column_count(raw);
    QueryResult current;
    for (int i = 0; i < ncol; ++i) current.columns.emplace_back(sqlite3_column_name(raw, i));
    int rc;
    while ((rc = sqlite3_step(raw)) == SQLITE_ROW) {
      std::vector<std::string> row;
      std::vector<CellType> types;
      for (int i = 0; i < ncol; ++i) {
        switch (sqlite3_column_type(raw, i)) {  // before column_text, which may convert it
          case SQLITE_NULL: types.push_back(CellType::Null); break;
          case SQLITE_INTEGER: types.push_back(CellType::Integer); break;
          case SQLITE_FLOAT: types.push_back(CellType::Real); break;
          default: types.push_back(CellType::Text); break;
        }
        const auto* text = sqlite3_column_text(raw, i);
        row.emplace_back(text ? reinterpret_cast<const char*>(text) : "");
      }
      current.rows.push_back(std::move(row));
      current.types.push_back(std::move(types));
    }
    if (rc != SQLITE_DONE) throw Error(std::string("query: ") + sqlite3_errmsg(db));
    if (ncol > 0) result = std::move(current);
  }
  return result;
}

}  // namespace kvq
