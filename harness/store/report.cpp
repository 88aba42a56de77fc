#include "harness/store/report.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "reference/error.h"

namespace kvq {

namespace {

// RFC 4180: a field with a comma, quote or line break is quoted, inner quotes doubled.
std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

void write_csv(const QueryResult& r, std::ostream& out) {
  auto line = [&](const std::vector<std::string>& cells) {
    for (size_t i = 0; i < cells.size(); ++i) out << (i ? "," : "") << csv_field(cells[i]);
    out << "\n";
  };
  line(r.columns);
  for (const auto& row : r.rows) line(row);
}

// A value as JSON by its SQLite type: INTEGER and REAL as numbers (a REAL with SQLite's 15
// significant digits, as the table and CSV show it; an infinity, which JSON cannot hold, as
// SQLite's text "Inf"), NULL as null, TEXT as a string.
nlohmann::json json_value(const std::string& text, CellType type) {
  switch (type) {
    case CellType::Null: return nullptr;
    case CellType::Integer: return std::stoll(text);
    case CellType::Real: {
      const double v = std::strtod(text.c_str(), nullptr);
      if (std::isfinite(v)) return v;
      return text;
    }
    case CellType::Text: break;
  }
  return text;
}

void write_json(const QueryResult& r, std::ostream& out) {
  nlohmann::json rows = nlohmann::json::array();
  for (size_t j = 0; j < r.rows.size(); ++j) {
    const auto& row = r.rows[j];
    nlohmann::json obj = nlohmann::json::object();
    for (size_t i = 0; i < row.size() && i < r.columns.size(); ++i) {
      const bool typed = j < r.types.size() && i < r.types[j].size();
      obj[r.columns[i]] = typed ? json_value(row[i], r.types[j][i]) : nlohmann::json(row[i]);
    }
    rows.push_back(std::move(obj));
  }
  out << rows.dump(2) << "\n";
}

void write_table(const QueryResult& r, std::ostream& out) {
  std::vector<size_t> width(r.columns.size());
  for (size_t i = 0; i < r.columns.size(); ++i) width[i] = r.columns[i].size();
  for (const auto& row : r.rows)
    for (size_t i = 0; i < row.size() && i < width.size(); ++i)
      width[i] = std::max(width[i], row[i].size());
  auto line = [&](const std::vector<std::string>& cells) {
    std::string text;
    for (size_t i = 0; i < cells.size() && i < width.size(); ++i)
      text += (i ? "  " : "") + cells[i] + std::string(width[i] - cells[i].size(), ' ');
    text.erase(text.find_last_not_of(' ') + 1);
    out << text << "\n";
  };
  line(r.columns);
  std::vector<std::string> rule;
  for (size_t w : width) rule.push_back(std::string(w, '-'));
  line(rule);
  for (const auto& row : r.rows) line(row);
  if (r.rows.empty()) out << "(no rows)\n";
}

}  // namespace

ReportFormat parse_report_format(const std::string& name) {
  if (name == "table") return ReportFormat::Table;
  if (name == "csv") return ReportFormat::Csv;
  if (name == "json") return ReportFormat::Json;
  throw Error("--format must be table, csv or json (got '" + name + "')");
}

void write_report(const QueryResult& result, ReportFormat format, std::ostream& out) {
  switch (format) {
    case ReportFormat::Table: write_table(result, out); break;
    case ReportFormat::Csv: write_csv(result, out); break;
    case ReportFormat::Json: write_json(result, out); break;
  }
}

}  // namespace kvq
