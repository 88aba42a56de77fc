// `kvq report [NAME | --sql "SELECT ..."] [--db PATH] [--format table|csv|json]`.
#include <sqlite3.h>

#include <boost/program_options.hpp>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "harness/commands.h"
#include "harness/store.h"
#include "reference/error.h"

namespace kvq {

namespace {

namespace po = boost::program_options;

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

void print(const QueryResult& r, const std::string& format) {
  if (format == "csv") {
    for (size_t i = 0; i < r.columns.size(); ++i)
      std::cout << (i ? "," : "") << csv_field(r.columns[i]);
    std::cout << "\n";
    for (const auto& row : r.rows) {
      for (size_t i = 0; i < row.size(); ++i) std::cout << (i ? "," : "") << csv_field(row[i]);
      std::cout << "\n";
    }
  } else if (format == "json") {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& row : r.rows) {
      nlohmann::json obj = nlohmann::json::object();
      for (size_t i = 0; i < row.size(); ++i) obj[r.columns[i]] = row[i];
      out.push_back(obj);
    }
    std::cout << out.dump(2) << "\n";
  } else {
    std::vector<size_t> width(r.columns.size());
    for (size_t i = 0; i < r.columns.size(); ++i) width[i] = r.columns[i].size();
    for (const auto& row : r.rows)
      for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
    auto line = [&](const std::vector<std::string>& cells) {
      for (size_t i = 0; i < cells.size(); ++i)
        std::cout << (i ? "  " : "") << cells[i] << std::string(width[i] - cells[i].size(), ' ');
      std::cout << "\n";
    };
    line(r.columns);
    for (const auto& row : r.rows) line(row);
    if (r.rows.empty()) std::cout << "(no rows)\n";
  }
}

}  // namespace

int cmd_report(int argc, char** argv) {
  po::options_description options(
      "kvq report [NAME | --sql \"SELECT ...\"] [options]\n\nRuns a named query (results/*.sql, "
      "default last_run) or your own SQL over the results database.\n\nOptions");
  std::string db = "results/kvq.db", sql, name, format = "table";
  options.add_options()("help,h", "this help")("list", "list the named queries")(
      "db", po::value(&db)->default_value(db), "results database")(
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
    throw Error(e.what());
  }
  if (vm.count("help")) {
    std::cout << options << "\nNamed queries:";
    for (const auto& [n, q] : named_queries()) std::cout << " " << n;
    std::cout << "\n";
    return 0;
  }
  if (vm.count("list")) {
    for (const auto& [n, q] : named_queries()) std::cout << n << "\n";
    return 0;
  }
  if (format != "table" && format != "csv" && format != "json")
    throw Error("--format must be table, csv or json (got '" + format + "')");
  if (sql.empty()) {
    if (name.empty()) name = "last_run";
    for (const auto& [n, q] : named_queries())
      if (n == name) sql = q;
    if (sql.empty()) throw Error("unknown report '" + name + "' (kvq report --list)");
  }
  if (!std::filesystem::is_regular_file(db))
    throw Error(db + ": no results database (run `kvq run SCENARIO --db " + db + "` first)");
  Store store(db);
  print(run_query(store.handle(), sql), format);
  return 0;
}

}  // namespace kvq
