#include "harness/store/merge.h"

#include <sqlite3.h>

#include <filesystem>
#include <memory>
#include <set>

#include "harness/store/store.h"
#include "reference/error.h"

namespace kvq {

namespace {

// The tables of results/schema.sql, parents first, with the column that points at the parent.
struct TableLink {
  const char* table;
  const char* parent_column;  // "" for runs
};
constexpr TableLink kTables[] = {
    {"runs", ""}, {"cases", "run_id"}, {"checks", "case_id"}, {"measurements", "case_id"}};

void exec(sqlite3* db, const std::string& sql, const std::string& where) {
  char* message = nullptr;
  if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &message) != SQLITE_OK) {
    const std::string text = message ? message : sqlite3_errmsg(db);
    sqlite3_free(message);
    throw Error(where + ": " + text);
  }
}

using StatementPtr = std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)>;

StatementPtr prepare(sqlite3* db, const std::string& sql, const std::string& where) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &raw, nullptr) != SQLITE_OK)
    throw Error(where + ": " + sqlite3_errmsg(db));
  return StatementPtr(raw, sqlite3_finalize);
}

void bind_text(sqlite3_stmt* st, int i, const std::string& v) {
  sqlite3_bind_text(st, i, v.c_str(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
}

std::string column_text(sqlite3_stmt* st, int i) {
  const auto* text = sqlite3_column_text(st, i);
  return text ? reinterpret_cast<const char*>(text) : "";
}

int64_t single_int(sqlite3* db, const std::string& sql, const std::string& where) {
  StatementPtr st = prepare(db, sql, where);
  if (sqlite3_step(st.get()) != SQLITE_ROW) throw Error(where + ": " + sqlite3_errmsg(db));
  return sqlite3_column_int64(st.get(), 0);
}

// The columns of `table` in the output that are copied as they are: all but the id and the link
// to the parent, which are renumbered. Taken from the schema, so a column added to
// results/schema.sql (with a new kSchemaVersion) is merged without a change here.
std::vector<std::string> copied_columns(sqlite3* db, const TableLink& t) {
  std::vector<std::string> out;
  StatementPtr st =
      prepare(db, std::string("PRAGMA main.table_info(") + t.table + ")", "merge: schema");
  while (sqlite3_step(st.get()) == SQLITE_ROW) {
    const std::string name = column_text(st.get(), 1);
    if (name != "id" && name != t.parent_column) out.push_back(name);
  }
  return out;
}

std::string joined(const std::vector<std::string>& columns, const std::string& prefix) {
  std::string out;
  for (const std::string& c : columns) out += (out.empty() ? "" : ", ") + prefix + c;
  return out;
}

// Refuses anything but a results store of this kvq's schema version with only known tables.
void check_input(sqlite3* db, const std::string& path) {
  int64_t version = 0;
  try {
    version = single_int(db, "PRAGMA src.user_version", path);
  } catch (const Error&) {
    throw Error(path + ": not an SQLite database (" + sqlite3_errmsg(db) + ")");
  }
  if (version != kSchemaVersion)
    throw Error(path + ": not a kvq results store of schema version " +
                std::to_string(kSchemaVersion) + " (user_version " + std::to_string(version) +
                ")");
  std::set<std::string> known;
  for (const TableLink& t : kTables) known.insert(t.table);
  StatementPtr st = prepare(
      db, "SELECT name FROM src.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
      path);
  std::set<std::string> found;
  while (sqlite3_step(st.get()) == SQLITE_ROW) {
    const std::string name = column_text(st.get(), 0);
    if (!known.count(name)) throw Error(path + ": table '" + name + "' is unknown to kvq merge");
    found.insert(name);
  }
  if (found.size() != known.size()) throw Error(path + ": a results table is missing");
}

// Copies every run of the attached `src` into main; the caller holds the transaction.
void copy_runs(sqlite3* db, const std::string& path, const std::string& output,
               MergeSummary& summary) {
  const std::vector<std::string> run_cols = copied_columns(db, kTables[0]);
  const std::vector<std::string> case_cols = copied_columns(db, kTables[1]);
  const std::vector<std::string> check_cols = copied_columns(db, kTables[2]);
  const std::vector<std::string> meas_cols = copied_columns(db, kTables[3]);

  exec(db, "CREATE TEMP TABLE IF NOT EXISTS merge_case_map (old INTEGER PRIMARY KEY, new INTEGER)",
       path);
  StatementPtr runs = prepare(
      db, "SELECT id, started, host, command, scenario_hash, status FROM src.runs ORDER BY id",
      path);
  // The identity of a run: where and when it started, and what it ran.
  StatementPtr same = prepare(db,
                              "SELECT id, (SELECT count(*) FROM main.cases WHERE run_id = "
                              "main.runs.id) FROM main.runs WHERE started = ? AND host = ? AND "
                              "command = ? AND scenario_hash = ?",
                              path);
  StatementPtr insert_run =
      prepare(db,
              "INSERT INTO main.runs (" + joined(run_cols, "") + ") SELECT " +
                  joined(run_cols, "") + " FROM src.runs WHERE id = ?",
              path + ": runs");
  StatementPtr src_cases = prepare(db, "SELECT id FROM src.cases WHERE run_id = ? ORDER BY id",
                                   path + ": cases");
  StatementPtr insert_case =
      prepare(db,
              "INSERT INTO main.cases (run_id, " + joined(case_cols, "") + ") SELECT ?, " +
                  joined(case_cols, "") + " FROM src.cases WHERE id = ?",
              path + ": cases");
  StatementPtr map_case =
      prepare(db, "INSERT INTO temp.merge_case_map (old, new) VALUES (?, ?)", path);
  const auto copy_children = [&](const TableLink& t, const std::vector<std::string>& cols) {
    exec(db,
         std::string("INSERT INTO main.") + t.table + " (case_id, " + joined(cols, "") +
             ") SELECT m.new, " + joined(cols, "x.") + " FROM src." + t.table +
             " x JOIN temp.merge_case_map m ON x.case_id = m.old ORDER BY x.id",
         path + ": " + t.table);
    return static_cast<int64_t>(sqlite3_changes(db));
  };

  while (sqlite3_step(runs.get()) == SQLITE_ROW) {
    const int64_t old_run = sqlite3_column_int64(runs.get(), 0);
    const std::string started = column_text(runs.get(), 1), host = column_text(runs.get(), 2),
                      command = column_text(runs.get(), 3), hash = column_text(runs.get(), 4),
                      status = column_text(runs.get(), 5);
    const std::string label = path + ": run " + std::to_string(old_run) + " (" + started + ", " +
                              host + ", '" + command + "')";
    sqlite3_reset(same.get());
    bind_text(same.get(), 1, started);
    bind_text(same.get(), 2, host);
    bind_text(same.get(), 3, command);
    bind_text(same.get(), 4, hash);
    if (sqlite3_step(same.get()) == SQLITE_ROW) {
      const int64_t existing = sqlite3_column_int64(same.get(), 0);
      const int64_t existing_cases = sqlite3_column_int64(same.get(), 1);
      const int64_t incoming = single_int(
          db, "SELECT count(*) FROM src.cases WHERE run_id = " + std::to_string(old_run), path);
      std::string note = label + " is already in " + output + " as run " +
                         std::to_string(existing) + ": skipped";
      if (incoming != existing_cases)
        note += " (it holds " + std::to_string(incoming) + " cases there " +
                std::to_string(existing_cases) + ")";
      summary.notes.push_back(note);
      ++summary.runs_skipped;
      continue;
    }
    sqlite3_reset(insert_run.get());
    sqlite3_bind_int64(insert_run.get(), 1, old_run);
    if (sqlite3_step(insert_run.get()) != SQLITE_DONE)
      throw Error(label + ": " + sqlite3_errmsg(db));
    const int64_t new_run = sqlite3_last_insert_rowid(db);
    if (status == "incomplete")
      summary.notes.push_back(label + " is incomplete (killed or still running): merged as is");

    exec(db, "DELETE FROM temp.merge_case_map", path);
    sqlite3_reset(src_cases.get());
    sqlite3_bind_int64(src_cases.get(), 1, old_run);
    while (sqlite3_step(src_cases.get()) == SQLITE_ROW) {
      const int64_t old_case = sqlite3_column_int64(src_cases.get(), 0);
      sqlite3_reset(insert_case.get());
      sqlite3_bind_int64(insert_case.get(), 1, new_run);
      sqlite3_bind_int64(insert_case.get(), 2, old_case);
      if (sqlite3_step(insert_case.get()) != SQLITE_DONE)
        throw Error(label + ": case " + std::to_string(old_case) + ": " + sqlite3_errmsg(db));
      sqlite3_reset(map_case.get());
      sqlite3_bind_int64(map_case.get(), 1, old_case);
      sqlite3_bind_int64(map_case.get(), 2, sqlite3_last_insert_rowid(db));
      if (sqlite3_step(map_case.get()) != SQLITE_DONE)
        throw Error(label + ": " + sqlite3_errmsg(db));
      ++summary.cases;
    }
    summary.checks += copy_children(kTables[2], check_cols);
    summary.measurements += copy_children(kTables[3], meas_cols);
    ++summary.runs_added;
  }
}

// Copies every input into `output` (created with the schema when absent).
MergeSummary merge_into(const std::vector<std::string>& inputs, const std::string& output) {
  Store store(output);  // creates the output with the schema, or checks its version
  sqlite3* db = store.handle();
  MergeSummary summary;
  for (const std::string& path : inputs) {
    StatementPtr attach = prepare(db, "ATTACH DATABASE ? AS src", path);
    bind_text(attach.get(), 1, path);
    if (sqlite3_step(attach.get()) != SQLITE_DONE)
      throw Error(path + ": cannot open (" + sqlite3_errmsg(db) + ")");
    attach.reset();
    try {
      check_input(db, path);
      // BEGIN IMMEDIATE: a `kvq run` writing the output at the same time waits, it is not lost;
      // rolled back when an input fails.
      WriteTransaction tx(store, "merge of " + path);
      copy_runs(db, path, output, summary);
      tx.commit();
    } catch (...) {
      sqlite3_exec(db, "DETACH DATABASE src", nullptr, nullptr, nullptr);
      throw;
    }
    exec(db, "DETACH DATABASE src", path);
  }
  return summary;
}

}  // namespace

MergeSummary merge_results(const std::vector<std::string>& inputs, const std::string& output) {
  namespace fs = std::filesystem;
  if (inputs.empty()) throw Error("merge: no input databases");
  for (const std::string& path : inputs) {
    if (!fs::is_regular_file(path)) throw Error(path + ": no such results database");
    std::error_code ec;
    if (fs::exists(output) && fs::equivalent(path, output, ec))
      throw Error(path + ": is the output " + output + " itself");
  }
  // A merge that fails leaves no output it created. An output that existed keeps the inputs
  // merged before the failing one (each input is its own transaction).
  const bool created = !fs::exists(output);
  try {
    return merge_into(inputs, output);
  } catch (...) {
    if (created)
      for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
        std::error_code ec;
        fs::remove(output + suffix, ec);
      }
    throw;
  }
}

}  // namespace kvq
