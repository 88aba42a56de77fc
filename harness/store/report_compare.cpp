#include "harness/store/report_compare.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <tuple>

#include "harness/store/report_runs.h"
#include "reference/error.h"

namespace kvq {

namespace {

struct Check {
  std::string status, got, expected;
  int64_t first_mismatch = -1;
};

struct RunRows {
  std::vector<std::string> cases;                               // names in id order
  std::map<std::pair<std::string, std::string>, Check> checks;  // (case, backend)
  // (case, backend, metric) -> value; nullopt for SQL NULL.
  std::map<std::tuple<std::string, std::string, std::string>, std::optional<double>> values;
};

RunRows load(sqlite3* db, int64_t run) {
  RunRows r;
  for (const auto& row : run_report_query(db,
                                          "SELECT name FROM cases WHERE run_id = :run "
                                          "ORDER BY id",
                                          run)
                             .rows)
    r.cases.push_back(row[0]);
  const QueryResult checks = run_report_query(
      db,
      "SELECT c.name, k.backend, k.status, k.got, k.expected, k.first_mismatch FROM checks k "
      "JOIN cases c ON c.id = k.case_id WHERE c.run_id = :run ORDER BY k.id",
      run);
  for (const auto& row : checks.rows)
    r.checks[{row[0], row[1]}] = {row[2], row[3], row[4], std::stoll(row[5])};
  // %.17g: the stored double exactly (SQLite's own text keeps 15 digits).
  const QueryResult values = run_report_query(
      db,
      "SELECT c.name, m.backend, m.metric, m.value IS NULL, printf('%.17g', m.value) "
      "FROM measurements m JOIN cases c ON c.id = m.case_id WHERE c.run_id = :run ORDER BY m.id",
      run);
  for (const auto& row : values.rows)
    r.values[{row[0], row[1], row[2]}] =
        row[3] == "1" ? std::nullopt : std::optional<double>(std::strtod(row[4].c_str(), nullptr));
  return r;
}

bool failing(const std::string& status) {
  return status == "fail" || status == "error";
}

std::string number(double v, const char* format = "%.6g") {
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char text[40];
  std::snprintf(text, sizeof text, format, v);
  return text;
}

std::string value_text(const std::optional<double>& v) {
  return v ? number(*v) : "NULL";
}

// What a failing check says: its error message, or where it first differed.
std::string failure_note(const Check& k) {
  if (k.status == "error") return k.got;
  if (k.first_mismatch < 0) return k.got;
  return "first mismatch [" + std::to_string(k.first_mismatch) + "]: expected " + k.expected +
         ", got " + k.got;
}

}  // namespace

double parse_threshold(const std::string& text) {
  std::string t = text;
  const bool percent = !t.empty() && t.back() == '%';
  if (percent) t.pop_back();
  char* end = nullptr;
  const double v = t.empty() ? NAN : std::strtod(t.c_str(), &end);
  if (t.empty() || *end != '\0' || !std::isfinite(v) || v < 0)
    throw Error("--threshold '" + text + "': expected a fraction >= 0 (0.05) or a percentage (5%)");
  return percent ? v / 100.0 : v;
}

RunComparison compare_runs(sqlite3* db, int64_t run_a, int64_t run_b, double threshold) {
  if (!std::isfinite(threshold) || threshold < 0)
    throw Error("--threshold must be a finite fraction >= 0");
  RunComparison c;
  c.run_a = run_a;
  c.run_b = run_b;
  c.threshold = threshold;
  c.rows.columns = {"change", "case", "backend", "metric", "a", "b", "delta", "relative", "note"};
  const RunRows a = load(db, run_a), b = load(db, run_b);

  // Sort keys: B's case order, then A's cases B lacks after them.
  std::map<std::string, size_t> order;
  for (const std::string& n : b.cases) order.emplace(n, order.size());
  for (const std::string& n : a.cases) order.emplace(n, order.size());
  const auto in = [](const std::vector<std::string>& cases, const std::string& n) {
    return std::find(cases.begin(), cases.end(), n) != cases.end();
  };

  using Row = std::vector<std::string>;
  std::vector<std::pair<size_t, Row>> new_failures, fixed, status;
  std::vector<std::tuple<double, size_t, Row>> changed;
  std::vector<std::pair<size_t, Row>> only_a_metrics, only_b_metrics;

  // Checks: every (case, backend) either run has.
  std::map<std::pair<std::string, std::string>, std::pair<const Check*, const Check*>> pairs;
  for (const auto& [key, k] : a.checks) pairs[key].first = &k;
  for (const auto& [key, k] : b.checks) pairs[key].second = &k;
  for (const auto& [key, ab] : pairs) {
    const auto& [ka, kb] = ab;
    const std::string sa = ka ? ka->status : "", sb = kb ? kb->status : "";
    if (sa == sb) continue;
    const size_t at = order.at(key.first);
    if (kb && failing(sb) && !failing(sa)) {
      new_failures.push_back(
          {at, {"new failure", key.first, key.second, "check", sa, sb, "", "", failure_note(*kb)}});
    } else if (ka && kb && failing(sa) && !failing(sb)) {
      fixed.push_back(
          {at,
           {"fixed", key.first, key.second, "check", sa, sb, "", "", "was: " + failure_note(*ka)}});
    } else if (ka && kb) {
      status.push_back({at, {"status", key.first, key.second, "check", sa, sb, "", "", ""}});
    }
    // A check in one run only belongs to a case in one run only (listed below) unless it is a
    // new failure; a passing check that appears or disappears with its backend is listed here.
    else if (in(a.cases, key.first) && in(b.cases, key.first)) {
      status.push_back({at, {"status", key.first, key.second, "check", sa, sb, "", "", ""}});
    }
  }

  // Measurements of cases both runs have.
  for (const auto& [key, vb] : b.values) {
    const auto& [name, backend, metric] = key;
    const size_t at = order.at(name);
    const auto ita = a.values.find(key);
    if (ita == a.values.end()) {
      if (in(a.cases, name))
        only_b_metrics.push_back(
            {at, {"only in B", name, backend, metric, "", value_text(vb), "", "", ""}});
      continue;
    }
    const std::optional<double>& va = ita->second;
    ++c.compared;
    if (!va || !vb) {
      if (va.has_value() != vb.has_value())
        changed.push_back({INFINITY,
                           at,
                           {"changed", name, backend, metric, value_text(va), value_text(vb), "",
                            "", "NULL on one side"}});
      continue;
    }
    const double delta = *vb - *va;
    // Relative to |a|; from 0 to non-zero is an infinite change, 0 to 0 none.
    const double relative = *va != 0.0     ? delta / std::fabs(*va)
                            : delta == 0.0 ? 0.0
                                           : std::copysign(INFINITY, delta);
    if (!(std::fabs(relative) > threshold)) continue;
    changed.push_back({std::fabs(relative),
                       at,
                       {"changed", name, backend, metric, number(*va), number(*vb), number(delta),
                        number(relative, "%.4g"), ""}});
  }
  for (const auto& [key, va] : a.values) {
    const auto& [name, backend, metric] = key;
    if (b.values.count(key) || !in(b.cases, name)) continue;
    only_a_metrics.push_back(
        {order.at(name), {"only in A", name, backend, metric, value_text(va), "", "", "", ""}});
  }

  const auto by_case = [](auto& v) {
    std::stable_sort(v.begin(), v.end(),
                     [](const auto& x, const auto& y) { return x.first < y.first; });
  };
  by_case(new_failures);
  by_case(fixed);
  by_case(status);
  by_case(only_a_metrics);
  by_case(only_b_metrics);
  std::stable_sort(changed.begin(), changed.end(), [](const auto& x, const auto& y) {
    return std::get<0>(x) != std::get<0>(y) ? std::get<0>(x) > std::get<0>(y)
                                            : std::get<1>(x) < std::get<1>(y);
  });

  for (auto& [at, row] : new_failures) c.rows.rows.push_back(row);
  for (auto& [at, row] : fixed) c.rows.rows.push_back(row);
  for (auto& [at, row] : status) c.rows.rows.push_back(row);
  for (auto& [key, at, row] : changed) c.rows.rows.push_back(row);
  for (auto& [at, row] : only_a_metrics) c.rows.rows.push_back(row);
  for (auto& [at, row] : only_b_metrics) c.rows.rows.push_back(row);
  for (const std::string& n : a.cases)
    if (!in(b.cases, n)) {
      c.rows.rows.push_back({"only in A", n, "", "", "", "", "", "", ""});
      ++c.cases_only_a;
    }
  for (const std::string& n : b.cases)
    if (!in(a.cases, n)) {
      c.rows.rows.push_back({"only in B", n, "", "", "", "", "", "", ""});
      ++c.cases_only_b;
    }
  c.new_failures = static_cast<int64_t>(new_failures.size());
  c.fixed = static_cast<int64_t>(fixed.size());
  c.status_changes = static_cast<int64_t>(status.size());
  c.changed = static_cast<int64_t>(changed.size());
  c.metrics_only_a = static_cast<int64_t>(only_a_metrics.size());
  c.metrics_only_b = static_cast<int64_t>(only_b_metrics.size());
  return c;
}

std::string comparison_summary(const RunComparison& c) {
  const auto count = [](int64_t n, const char* one, const char* many) {
    return std::to_string(n) + " " + (n == 1 ? one : many);
  };
  return count(c.new_failures, "new failure", "new failures") + ", " + std::to_string(c.fixed) +
         " fixed, " + count(c.status_changes, "other status change", "other status changes") +
         ", " + std::to_string(c.changed) + " changed by more than " + number(100.0 * c.threshold) +
         "% (of " + count(c.compared, "measurement", "measurements") + " in both runs), " +
         count(c.metrics_only_a + c.metrics_only_b, "measurement", "measurements") +
         " in one run only, " + count(c.cases_only_a, "case", "cases") + " only in A (run " +
         std::to_string(c.run_a) + "), " + count(c.cases_only_b, "case", "cases") +
         " only in B (run " + std::to_string(c.run_b) + ")";
}

}  // namespace kvq
