// `kvq report [NAME | --sql "SELECT ..." | --compare A B] [--db PATH] [--run ID]
//             [--format table|csv|json] [--threshold T] [--list]`.
#include <boost/program_options.hpp>
#include <filesystem>
#include <iostream>
#include <optional>

#include "harness/cli/cli_options.h"
#include "harness/cli/commands.h"
#include "harness/store/report.h"
#include "harness/store/report_compare.h"
#include "harness/store/report_orderings.h"
#include "harness/store/report_runs.h"
#include "harness/store/store.h"
#include "reference/error.h"

namespace kvq {

namespace {

namespace po = boost::program_options;

// Reports that are not one SQL file: an alias, the derived ordering check, the run comparison.
struct BuiltIn {
  const char* name;
  const char* summary;
};
constexpr BuiltIn kBuiltIns[] = {
    {"speed", "Alias of speedup (backend speed ratios)."},
    {"orderings", "Whether rotatekv < kivi < rtn held per input and bits (from accuracy)."},
    {"--compare A B", "Run A -> B: new failures, fixed, metric changes beyond --threshold."},
};

// The first sentence of a named query's leading comment (results/NAME.sql) says what it shows.
std::string summary_of(const std::string& sql) {
  std::string text;
  size_t at = 0;
  while (sql.compare(at, 3, "-- ") == 0) {
    const size_t end = sql.find('\n', at);
    const std::string line = sql.substr(at + 3, end == std::string::npos ? end : end - at - 3);
    text += (text.empty() ? "" : " ") + line;
    const size_t stop = text.find(". ");
    if (stop != std::string::npos) return text.substr(0, stop + 1);
    if (!text.empty() && text.back() == '.') return text;
    if (end == std::string::npos) break;
    at = end + 1;
  }
  return text;
}

void list_queries(std::ostream& out) {
  size_t width = 0;
  for (const auto& [n, q] : named_queries()) width = std::max(width, n.size());
  for (const BuiltIn& b : kBuiltIns) width = std::max(width, std::string(b.name).size());
  for (const auto& [n, q] : named_queries())
    out << "  " << n << std::string(width - n.size() + 2, ' ') << summary_of(q) << "\n";
  for (const BuiltIn& b : kBuiltIns)
    out << "  " << b.name << std::string(width - std::string(b.name).size() + 2, ' ') << b.summary
        << "\n";
}

std::string known_names() {
  std::string known;
  for (const auto& [n, q] : named_queries()) known += (known.empty() ? "" : ", ") + n;
  return known + ", speed, orderings";
}

std::string sql_of(const std::string& name) {
  for (const auto& [n, q] : named_queries())
    if (n == name) return q;
  throw Error("report: unknown query '" + name + "' (known: " + known_names() +
              "; kvq report --help says what each shows)");
}

std::string describe_run(sqlite3* db, int64_t id) {
  const QueryResult r = run_report_query(
      db, "SELECT id, started, status, scenario, git_sha FROM runs WHERE id = :run", id);
  if (r.rows.empty()) return "run " + std::to_string(id);
  const auto& row = r.rows[0];
  return "run " + row[0] + " (" + row[1] + ", " + row[2] + ", " +
         (row[3].empty() ? std::string("no scenario") : row[3]) + ", git " + row[4].substr(0, 12) +
         ")";
}

// A report of a run that did not finish says so on stderr (stdout stays the report, also as CSV
// or JSON), before the rows.
void note_unfinished(sqlite3* db, int64_t run) {
  const std::string note = unfinished_run_note(db, run);
  if (note.empty()) return;
  std::cout.flush();
  std::cerr << "kvq: note: " << note << "\n";
}

}  // namespace

int cmd_report(int argc, char** argv) {
  po::options_description options(
      "kvq report [NAME | --sql \"SELECT ...\" | --compare A B] [options]\n\n"
      "Runs a named query (results/NAME.sql; default last_run) or your own SQL over the results\n"
      "database and prints the rows, or compares two runs. Runs are named by id, 'last' (the\n"
      "newest) or 'last~N' (N runs before it). In --sql, :run is the run given with --run.\n"
      "Examples:\n"
      "  kvq report accuracy                  # method x bits, and whether the papers' order held\n"
      "  kvq report failing --format csv\n"
      "  kvq report sinks --run 12 --format json\n"
      "  kvq report --compare last~1 last --threshold 5%\n\nOptions");
  std::string db = "results/kvq.db", sql, name, format = "table", run_text, threshold_text = "1%";
  std::vector<std::string> compare;
  options.add_options()("help,h", "this help, with the list of queries")(
      "list", "list the queries, one line each")("db", po::value(&db)->default_value(db),
                                                 "results database (SQLite)")(
      "sql", po::value(&sql), "run this SQL instead of a named query")(
      "run", po::value(&run_text), "read this run instead of the newest (id, last, last~N)")(
      "compare", po::value(&compare)->multitoken(), "A B: what changed from run A to run B")(
      "threshold", po::value(&threshold_text)->default_value(threshold_text),
      "--compare lists measurements whose relative change exceeds this (0.05 or 5%)")(
      "format", po::value(&format)->default_value(format), "table | csv | json");
  const std::optional<po::variables_map> vm = parse_subcommand_options(
      argc, argv, options, "report: ", PositionalArguments{"name", po::value(&name), 1});
  if (!vm) {  // --help: the options, then the queries
    std::cout << "Queries:\n";
    list_queries(std::cout);
    return 0;
  }
  if (vm->count("list")) {
    list_queries(std::cout);
    return 0;
  }
  const ReportFormat fmt = parse_report_format(format);
  const bool comparing = vm->count("compare") > 0;
  if (comparing && compare.size() != 2)
    throw Error("report: --compare takes two runs, A and B (e.g. --compare last~1 last)");
  if (comparing && (!name.empty() || !sql.empty() || !run_text.empty()))
    throw Error("report: --compare A B stands alone (no NAME, --sql or --run with it)");
  if (!sql.empty() && !name.empty()) throw Error("report: give a query NAME or --sql, not both");
  const double threshold = parse_threshold(threshold_text);
  if (!comparing && sql.empty()) {
    if (name.empty()) name = "last_run";
    if (name != "speed" && name != "orderings") sql = sql_of(name);  // unknown names fail here
  }
  // Reading must not create an empty database where the user mistyped the path.
  if (!std::filesystem::is_regular_file(db))
    throw Error(db + ": no results database (run `kvq run SCENARIO --db " + db + "` first)");
  Store store(db, StoreAccess::ReadOnly);  // a report never changes the database
  sqlite3* handle = store.handle();

  if (comparing) {
    const int64_t a = resolve_run(handle, compare[0], db);
    const int64_t b = resolve_run(handle, compare[1], db);
    note_unfinished(handle, a);
    if (b != a) note_unfinished(handle, b);
    const RunComparison c = compare_runs(handle, a, b, threshold);
    if (fmt == ReportFormat::Table)
      std::cout << "A = " << describe_run(handle, a) << "\nB = " << describe_run(handle, b)
                << "\n\n";
    write_report(c.rows, fmt, std::cout);
    if (fmt == ReportFormat::Table) std::cout << "\n" << comparison_summary(c) << "\n";
    return 0;
  }

  std::optional<int64_t> run;
  if (!run_text.empty()) {
    run = resolve_run(handle, run_text, db);
    note_unfinished(handle, *run);
  } else if (!vm->count("sql")) {
    // A named query reads the newest run: say so plainly when there is none.
    note_unfinished(handle, resolve_run(handle, "last", db));
  }
  if (name == "speed") sql = sql_of("speedup");
  if (name == "orderings") {
    write_report(paper_orderings(run_report_query(handle, sql_of("accuracy"), run)), fmt,
                 std::cout);
    return 0;
  }
  const QueryResult result = run_report_query(handle, sql, run);
  write_report(result, fmt, std::cout);
  if (name == "accuracy" && fmt == ReportFormat::Table && !result.rows.empty()) {
    const std::string lines = ordering_lines(paper_orderings(result));
    std::cout << "\nThe papers' order rotatekv < kivi < rtn (lower error first), per input and "
                 "bits:\n"
              << (lines.empty() ? "not measured: the run has none of rotatekv, kivi, rtn\n"
                                : lines);
  }
  return 0;
}

}  // namespace kvq
