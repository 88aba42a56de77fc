// Runs the `kvq` binary under test ($KVQ_BIN, set by tests/meson.build) as a child process, for
// tests that check what a user sees: exit status, stdout and stderr, what a killed process
// leaves behind, and the measurements a `kvq run` stored. POSIX only (fork/exec), like the rest
// of the harness.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>
#include "tests/scratch.h"

namespace kvq::testing {

inline std::string kvq_bin() {
  const char* bin = std::getenv("KVQ_BIN");
  if (!bin || !std::filesystem::is_regular_file(bin))
    throw std::runtime_error("KVQ_BIN is not set to the kvq binary (run through meson test)");
  return bin;
}

inline std::string read_whole_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A started `kvq ARGS...` with stdout and stderr going to files in `out_dir`.
class KvqProcess {
 public:
  KvqProcess(const std::vector<std::string>& args, const std::filesystem::path& out_dir,
             const std::string& tag = "kvq")
      : stdout_path_(out_dir / (tag + ".stdout")), stderr_path_(out_dir / (tag + ".stderr")) {
    const std::string bin = kvq_bin();
    std::vector<std::string> argv_text = {bin};
    argv_text.insert(argv_text.end(), args.begin(), args.end());
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      const int out = ::open(stdout_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int err = ::open(stderr_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (out < 0 || err < 0 || ::dup2(out, 1) < 0 || ::dup2(err, 2) < 0) ::_exit(127);
      std::vector<char*> argv;
      for (std::string& a : argv_text) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(bin.c_str(), argv.data());
      ::_exit(127);
    }
  }
  KvqProcess(const KvqProcess&) = delete;
  KvqProcess& operator=(const KvqProcess&) = delete;
  ~KvqProcess() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  pid_t pid() const { return pid_; }
  // Waits for the exit; returns the exit status, or 128 + signal number when killed.
  int wait() {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0) {
    }
    reaped_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  void kill_now() { ::kill(pid_, SIGKILL); }
  std::string out() const { return read_whole_file(stdout_path_); }
  std::string err() const { return read_whole_file(stderr_path_); }

 private:
  std::filesystem::path stdout_path_, stderr_path_;
  pid_t pid_ = -1;
  bool reaped_ = false;
};

struct KvqResult {
  int status = -1;
  std::string out, err;
};

// Runs `kvq ARGS...` to completion.
inline KvqResult run_kvq(const std::vector<std::string>& args, const std::filesystem::path& dir,
                         const std::string& tag = "kvq") {
  KvqProcess p(args, dir, tag);
  KvqResult r;
  r.status = p.wait();
  r.out = p.out();
  r.err = p.err();
  std::filesystem::remove(dir / (tag + ".stdout"));
  std::filesystem::remove(dir / (tag + ".stderr"));
  return r;
}

// A scenario run as a user runs it: `kvq run DIR/NAME.toml --db DIR/results.db` in a fresh
// DIR = <temp>/kvq_test_NAME_<pid>, which the test removes when it is done.
struct ScenarioRun {
  std::filesystem::path dir, db;
  KvqResult result;
};

inline ScenarioRun run_scenario(const std::string& name, const std::string& toml) {
  ScenarioRun run;
  run.dir = scratch_root("scenario_runs") / name;
  std::filesystem::create_directories(run.dir);
  const std::filesystem::path scenario = run.dir / (name + ".toml");
  std::ofstream(scenario) << toml;
  run.db = run.dir / "results.db";
  run.result = run_kvq({"run", scenario.string(), "--db", run.db.string()}, run.dir);
  return run;
}

// One row of the measurements table (results/schema.sql) with the name of its case.
struct StoredMeasurement {
  std::string case_name, metric;
  double value = 0.0;
};

// The measurements in the results database `db` whose metric is one of `metrics`, ordered by
// `order_by` (SQL over c = cases and m = measurements, e.g. "c.id, m.id").
inline std::vector<StoredMeasurement> stored_measurements(const std::filesystem::path& db,
                                                          const std::vector<std::string>& metrics,
                                                          const std::string& order_by) {
  std::string sql =
      "SELECT c.name, m.metric, m.value FROM cases c JOIN measurements m ON m.case_id = c.id "
      "WHERE m.metric IN (";
  for (size_t i = 0; i < metrics.size(); ++i) sql += i ? ", ?" : "?";
  sql += ") ORDER BY " + order_by;
  sqlite3* h = nullptr;
  if (sqlite3_open(db.c_str(), &h) != SQLITE_OK) {
    sqlite3_close(h);
    throw std::runtime_error("cannot open " + db.string());
  }
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(h, sql.c_str(), -1, &st, nullptr) != SQLITE_OK) {
    const std::string message = sqlite3_errmsg(h);
    sqlite3_close(h);
    throw std::runtime_error(db.string() + ": " + message + " in " + sql);
  }
  for (size_t i = 0; i < metrics.size(); ++i)
    sqlite3_bind_text(st, static_cast<int>(i) + 1, metrics[i].c_str(), -1, SQLITE_TRANSIENT);
  std::vector<StoredMeasurement> rows;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    const auto text = [&](int column) {
      const unsigned char* t = sqlite3_column_text(st, column);
      return std::string(t ? reinterpret_cast<const char*>(t) : "");
    };
    rows.push_back({text(0), text(1), sqlite3_column_double(st, 2)});
  }
  const std::string message = rc == SQLITE_DONE ? "" : sqlite3_errmsg(h);
  sqlite3_finalize(st);
  sqlite3_close(h);
  if (!message.empty()) throw std::runtime_error(db.string() + ": " + message + " in " + sql);
  return rows;
}

}  // namespace kvq::testing
