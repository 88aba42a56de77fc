#include "harness/store/report_orderings.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <map>

#include "reference/error.h"

namespace kvq {

namespace {

// The papers' order, lowest error first (RotateKV Tab. 2, KIVI Tab. 1 vs RTN baselines).
constexpr const char* kOrder[] = {"rotatekv", "kivi", "rtn"};
constexpr const char* kMetrics[] = {"kv_nmse", "attention_rel_error", "attention_rel_l2"};
constexpr size_t kMetricCount = std::size(kMetrics);

size_t column(const QueryResult& r, const std::string& name) {
  const auto it = std::find(r.columns.begin(), r.columns.end(), name);
  if (it == r.columns.end())
    throw Error("paper orderings: the accuracy report has no column '" + name + "'");
  return static_cast<size_t>(it - r.columns.begin());
}

using Triple = std::array<std::string, 3>;  // rotatekv, kivi, rtn

std::string verdict(const Triple& text) {
  for (size_t i = 0; i < 3; ++i)
    if (text[i].empty()) return std::string("not measured: no ") + kOrder[i];
  std::string broken;
  for (size_t i = 0; i + 1 < 3; ++i) {
    const double lo = std::strtod(text[i].c_str(), nullptr);
    const double hi = std::strtod(text[i + 1].c_str(), nullptr);
    if (lo < hi) continue;
    broken += std::string(broken.empty() ? "" : ", ") + kOrder[i] + " " + text[i] +
              (lo == hi ? " = " : " > ") + kOrder[i + 1] + " " + text[i + 1];
  }
  return broken.empty() ? "held" : "did not hold: " + broken;
}

}  // namespace

QueryResult paper_orderings(const QueryResult& accuracy) {
  const size_t input = column(accuracy, "input"), method = column(accuracy, "method"),
               bits = column(accuracy, "bits");
  std::array<size_t, kMetricCount> metric_col;
  for (size_t m = 0; m < kMetricCount; ++m) metric_col[m] = column(accuracy, kMetrics[m]);
  // (input, bits) in report order -> the three methods' values per metric.
  std::vector<std::pair<std::string, std::string>> keys;
  std::map<std::pair<std::string, std::string>, std::array<Triple, kMetricCount>> values;
  for (const auto& row : accuracy.rows) {
    const auto it = std::find(std::begin(kOrder), std::end(kOrder), row.at(method));
    if (it == std::end(kOrder)) continue;
    const std::pair<std::string, std::string> key{row.at(input), row.at(bits)};
    if (!values.count(key)) keys.push_back(key);
    for (size_t m = 0; m < kMetricCount; ++m)
      values[key][m][static_cast<size_t>(it - std::begin(kOrder))] = row.at(metric_col[m]);
  }
  QueryResult out;
  out.columns = {"input", "bits", "metric", "rotatekv", "kivi", "rtn", "ordering"};
  for (const auto& key : keys)
    for (size_t m = 0; m < kMetricCount; ++m) {
      const Triple& v = values[key][m];
      if (v[0].empty() && v[1].empty() && v[2].empty()) continue;  // e.g. a run before the metric
      out.rows.push_back({key.first, key.second, kMetrics[m], v[0], v[1], v[2], verdict(v)});
      const auto number = [](const std::string& t, CellType type) {
        return t.empty() ? CellType::Null : type;
      };
      out.types.push_back({CellType::Text, number(key.second, CellType::Integer), CellType::Text,
                           number(v[0], CellType::Real), number(v[1], CellType::Real),
                           number(v[2], CellType::Real), CellType::Text});
    }
  return out;
}

std::string ordering_lines(const QueryResult& orderings) {
  std::string out;
  std::string last;
  for (const auto& row : orderings.rows) {
    const std::string head = row.at(0) + ", " + (row.at(1).empty() ? "no" : row.at(1)) + " bits";
    if (head != last) {
      out += (out.empty() ? "" : "\n") + head + ": ";
      last = head;
    } else {
      out += "; ";
    }
    out += row.at(2) + " " + row.at(6);
  }
  return out.empty() ? out : out + "\n";
}

}  // namespace kvq
