// `kvq report --compare A B`: what changed from run A to run B. Checks are matched by (case name,
// backend) and measurements by (case name, backend, metric); cases by name.
#pragma once

#include <cstdint>
#include <string>

#include "harness/store/store.h"

namespace kvq {

struct RunComparison {
  int64_t run_a = 0, run_b = 0;
  double threshold = 0.01;  // relative change a measurement must exceed to be listed
  // Columns: change, case, backend, metric, a, b, delta, relative, note. Rows in this order:
  //   "new failure"  check failing (fail/error) in B, not failing or absent in A
  //   "fixed"        check failing in A, present and not failing in B
  //   "status"       any other check status change (pass -> unsupported, ...)
  //   "changed"      measurement in both with |relative| > threshold, largest first
  //   "only in A" / "only in B"  measurement of a common case in one run only, then whole cases
  //                  in one run only (metric empty)
  // delta = b - a; relative = delta / |a| ("inf" or "-inf" when a = 0 and b != 0). For check
  // rows a and b hold the statuses ("" when absent) and note the failing check's message.
  QueryResult rows;
  int64_t new_failures = 0, fixed = 0, status_changes = 0, changed = 0;
  int64_t compared = 0;  // measurements present in both runs
  int64_t metrics_only_a = 0, metrics_only_b = 0, cases_only_a = 0, cases_only_b = 0;
};

// Throws kvq::Error when threshold is negative or not finite.
RunComparison compare_runs(sqlite3* db, int64_t run_a, int64_t run_b, double threshold);

// One line: "1 new failure, 0 fixed, 2 changed beyond 1% (of 40 measurements in both), ...".
std::string comparison_summary(const RunComparison& c);

// "--threshold": a fraction ("0.05") or a percentage ("5%"); kvq::Error when neither or < 0.
double parse_threshold(const std::string& text);

}  // namespace kvq
