// Which run a report reads: runs named on the command line (an id, `last`, `last~N`) and report
// queries run with that choice bound to the SQL parameter :run.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "harness/store/store.h"

namespace kvq {

// The ids of the stored runs, oldest first.
std::vector<int64_t> stored_run_ids(sqlite3* db);

// "7" (a stored run id), "last" (the newest run) or "last~N" (N runs before the newest, by id).
// Throws kvq::Error naming `db_path` when the database has no runs, the id is not stored (with
// the ids that are) or the text is none of these forms.
int64_t resolve_run(sqlite3* db, const std::string& spec, const std::string& db_path);

// "" when run `run` finished ('complete'); otherwise one sentence saying it did not: status
// 'incomplete' (no finish recorded: killed, or still running) or 'failed'.
std::string unfinished_run_note(sqlite3* db, int64_t run);

// run_query (harness/store/store.h) with the parameter :run of every statement bound to `run`, or
// to NULL when none is given, so a named query can read a chosen run and default to the newest.
QueryResult run_report_query(sqlite3* db, const std::string& sql, std::optional<int64_t> run);

}  // namespace kvq
