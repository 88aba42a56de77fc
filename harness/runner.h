// Runs a scenario: for each expanded case, builds its input, runs the op on the reference and
// on every selected backend, compares (bitwise or against the fp64 oracle), prints one line per
// (case, backend) and writes each case in one transaction to the results store.
#pragma once

#include <string>
#include <vector>

#include "harness/scenario.h"

namespace kvq {

struct RunOptions {
  std::string db = "results/kvq.db";
  std::vector<std::string> backends;  // overrides the scenario's; empty = keep
  std::string filter;                 // ECMAScript regex on the case name; empty = all
  std::string command;                // the kvq command line, stored with the run
};

struct Failure {
  std::string case_name, backend, where, expected, got, repro;
  int64_t first_mismatch = -1;
};

struct RunSummary {
  int cases = 0, passed = 0, failed = 0, skipped = 0, measured = 0;
  std::vector<Failure> failures;  // failed and errored checks
};

RunSummary run_scenario(const Scenario& scenario, const RunOptions& options);

}  // namespace kvq
