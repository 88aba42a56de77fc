// `kvq report [NAME | --sql "SELECT ..."] [--db PATH] [--format table|csv|json] [--list]`.
#include <boost/program_options.hpp>
#include <filesystem>
#include <iostream>

#include "harness/commands.h"
#include "harness/report.h"
#include "harness/store.h"
#include "reference/error.h"

namespace kvq {

namespace {

namespace po = boost::program_options;

// The first comment line of a named query (results/NAME.sql) says what it shows.
std::string summary_of(const std::string& sql) {
  if (sql.rfind("-- ", 0) != 0) return "";
  return sql.substr(3, sql.find('\n') - 3);
}

}  // namespace

int cmd_report(int argc, char** argv) {
  po::options_description options(
      "kvq report [NAME | --sql \"SELECT ...\"] [options]\n\nRuns a named query (results/NAME.sql; "
      "default last_run) or your own SQL over the results\ndatabase and prints the rows.\n"
      "Example: kvq report failing --db results/kvq.db --format csv\n\nOptions");
  std::string db = "results/kvq.db", sql, name, format = "table";
  options.add_options()("help,h", "this help")("list", "list the named queries")(
      "db", po::value(&db)->default_value(db), "results database (SQLite)")(
      "sql", po::value(&sql), "run this SQL instead of a named query")(
      "format", po::value(&format)->default_value(format), "table | csv | json");
  po::options_description hidden;
  hidden.add_options()("name", po::value(&name));
  po::positional_options_description positional;
  positional.add("name", 1);
  po::options_description all;
  all.add(options).add(hidden);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(all).positional(positional).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw Error(std::string("report: ") + e.what());
  }
  if (vm.count("help")) {
    std::cout << options << "\nNamed queries:\n";
    for (const auto& [n, q] : named_queries())
      std::cout << "  " << n << "  " << summary_of(q) << "\n";
    return 0;
  }
  if (vm.count("list")) {
    for (const auto& [n, q] : named_queries()) std::cout << n << "  " << summary_of(q) << "\n";
    return 0;
  }
  const ReportFormat fmt = parse_report_format(format);
  if (!sql.empty() && !name.empty()) throw Error("report: give a query NAME or --sql, not both");
  if (sql.empty()) {
    if (name.empty()) name = "last_run";
    for (const auto& [n, q] : named_queries())
      if (n == name) sql = q;
    if (sql.empty()) throw Error("report: unknown query '" + name + "' (kvq report --list)");
  }
  // Reading must not create an empty database where the user mistyped the path.
  if (!std::filesystem::is_regular_file(db))
    throw Error(db + ": no results database (run `kvq run SCENARIO --db " + db + "` first)");
  Store store(db);
  write_report(run_query(store.handle(), sql), fmt, std::cout);
  return 0;
}

}  // namespace kvq
