// Runs a scenario: for each expanded case, builds its input, runs the op on the reference and
// on every selected backend, compares (bitwise or against the fp64 oracle), prints one line per
// (case, backend) and writes each case in one transaction to the results store.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backends/backend.h"
#include "harness/scenario/scenario.h"

namespace kvq {

struct RunOptions {
  std::string db = "results/kvq.db";  // relative to the working directory
  std::vector<std::string> backends;  // overrides the scenario's; empty = keep
  std::string filter;                 // ECMAScript regex searched in the case name; empty = all
  std::string command;                // the kvq command line, stored with the run
  // --shard i/n: only the expanded cases whose index in the scenario (counted before `filter`,
  // so a case's shard does not depend on the filter) is i modulo n. Shards 0..n-1 cover every
  // case exactly once (docs/design.md "Scale beyond one machine"; merge with `kvq merge`).
  int64_t shard_index = 0, shard_count = 1;
  // Backends beyond backend_registry(), looked up first by name (tests register a deliberately
  // wrong backend here to prove that the checks catch it).
  std::vector<BackendEntry> extra_backends;
};

// One failed or errored check, as `kvq gate` prints it.
struct Failure {
  std::string case_name, backend;
  std::string where;  // the output part that differs first ("codes", "values", ...) or "error"
  std::string expected, got;
  std::string repro;  // the one command that reruns exactly this (case, backend)
  int64_t first_mismatch = -1;
};

// What became of the checks given to one backend, for the per-backend summary and the gate.
struct BackendTally {
  std::string backend;
  int passed = 0, failed = 0, skipped = 0;  // failed counts errors too
  // Named: listed by --backends, or (without it) by a case's or the scenario's `backends` key.
  // A backend only reached through "every available one" is not named.
  bool named = false;
  std::string skip_reason;  // the first skip's note ("not available: ...", "unsupported: ...")
  int ran() const { return passed + failed; }
};

struct RunSummary {
  int64_t run_id = 0;
  int cases = 0, passed = 0, failed = 0, skipped = 0, measured = 0;
  std::vector<Failure> failures;      // failed and errored checks, in run order
  std::vector<BackendTally> backends;  // in order of first use
};

// The cases a run executes, in scenario order: the --shard slice, then the --filter regex.
// Throws kvq::Error for a bad regex or shard.
std::vector<const ScenarioCase*> select_cases(const Scenario& scenario, const RunOptions& options);

// Throws kvq::Error for an unknown backend name or a bad filter regex; an op that fails on one
// backend is recorded as that check's "error" and the run goes on.
RunSummary run_scenario(const Scenario& scenario, const RunOptions& options);

// Why `kvq gate` fails this run, in one line, or "" when it passes: a failed or errored check;
// else, unless allow_skip (--allow-skip), a named backend that skipped a check (unavailable, or
// lacking a case's op) or a run in which no check ran at all.
std::string gate_failure(const RunSummary& summary, bool allow_skip);

}  // namespace kvq
