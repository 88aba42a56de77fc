#include "harness/store/report_runs.h"

#include <sqlite3.h>

#include "reference/error.h"

namespace kvq {

namespace {

// "1, 2, 3" or, for long histories, "1, 2, ..., 9, 10" (the oldest two and the newest five).
std::string id_list(const std::vector<int64_t>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids.size() > 7 && i == 2) {
      out += ", ...";
      i = ids.size() - 6;
      continue;
    }
    out += (out.empty() ? "" : ", ") + std::to_string(ids[i]);
  }
  return out;
}

// A run id as typed: digits only, at most 18 of them (no sign, no overflow).
std::optional<int64_t> parse_id(const std::string& text) {
  if (text.empty() || text.size() > 18) return std::nullopt;
  int64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

}  // namespace

std::vector<int64_t> stored_run_ids(sqlite3* db) {
  std::vector<int64_t> ids;
  for (const auto& row : run_query(db, "SELECT id FROM runs ORDER BY id").rows)
    ids.push_back(std::stoll(row.at(0)));
  return ids;
}

int64_t resolve_run(sqlite3* db, const std::string& spec, const std::string& db_path) {
  const std::vector<int64_t> ids = stored_run_ids(db);
  if (ids.empty())
    throw Error(db_path + ": no runs stored yet (`kvq run SCENARIO --db " + db_path +
                "` writes one)");
  const std::string forms = "a run id, 'last' or 'last~N'";
  if (spec == "last") return ids.back();
  if (spec.rfind("last~", 0) == 0) {
    const std::optional<int64_t> back = parse_id(spec.substr(5));
    if (!back) throw Error("run '" + spec + "': expected " + forms);
    if (*back >= static_cast<int64_t>(ids.size()))
      throw Error("run '" + spec + "': " + db_path + " holds only " + std::to_string(ids.size()) +
                  " run(s): " + id_list(ids));
    return ids[ids.size() - 1 - static_cast<size_t>(*back)];
  }
  const std::optional<int64_t> id = parse_id(spec);
  if (!id) throw Error("run '" + spec + "': expected " + forms);
  for (int64_t stored : ids)
    if (stored == *id) return *id;
  throw Error("run " + spec + ": no such run in " + db_path + " (stored: " + id_list(ids) + ")");
}

std::string unfinished_run_note(sqlite3* db, int64_t run) {
  const QueryResult r =
      run_report_query(db, "SELECT status FROM runs WHERE id = :run", std::optional(run));
  const std::string status = r.rows.empty() ? "" : r.rows[0][0];
  const std::string head = "run " + std::to_string(run);
  if (status == "incomplete")
    return head + " is incomplete: it has no finish (killed, or still running); the report shows "
                  "only the cases it stored";
  if (status == "failed")
    return head + " failed: it stopped before its last case; the report shows only the cases it "
                  "stored";
  return "";
}

QueryResult run_report_query(sqlite3* db, const std::string& sql, std::optional<int64_t> run) {
  try {
    return run_query(db, sql, run ? QueryParameters{{":run", *run}} : QueryParameters{});
  } catch (const Error& e) {
    const char* file = sqlite3_db_filename(db, "main");  // the error names the database
    throw Error(std::string(file && *file ? file : "results database") + ": " + e.what());
  }
}

}  // namespace kvq
