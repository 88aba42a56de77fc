// `kvq run SCENARIO` and `kvq gate SCENARIO`: the same run; gate exits 1 when a check fails,
// when a named backend did not run a check, or when no check ran (unless --allow-skip).
#include <boost/program_options.hpp>
#include <cstdio>
#include <optional>
#include <string>
#include <sstream>
#include <vector>

#include "harness/cli/cli_options.h"
#include "harness/cli/commands.h"
#include "harness/run/runner.h"
#include "harness/scenario/scenario.h"
#include "reference/error.h"

namespace kvq {

namespace {

namespace po = boost::program_options;

// "i/n" with 0 <= i < n, both plain decimal numbers.
void parse_shard(const std::string& text, RunOptions& run) {
  const size_t slash = text.find('/');
  const auto number = [&](const std::string& part, int64_t* out) {
    if (part.empty() || part.size() > 9 ||
        part.find_first_not_of("0123456789") != std::string::npos)
      return false;
    *out = std::stoll(part);
    return true;
  };
  if (slash == std::string::npos || !number(text.substr(0, slash), &run.shard_index) ||
      !number(text.substr(slash + 1), &run.shard_count) || run.shard_count < 1 ||
      run.shard_index >= run.shard_count)
    throw Error("--shard '" + text + "': expected i/n with 0 <= i < n, e.g. 0/4");
}

// The cases to run; a scenario without a case or a --filter matching none is a user error
// (exit 2): a gate over nothing would otherwise pass. An empty --shard slice is not (a job
// array may have more tasks than cases).
std::vector<const ScenarioCase*> cases_to_run(const Scenario& scenario, const RunOptions& run) {
  if (scenario.cases.empty())
    throw Error(scenario.path + ": the scenario has no case (add a [[case]] table)");
  if (!run.filter.empty()) {
    RunOptions whole = run;
    whole.shard_index = 0;
    whole.shard_count = 1;
    if (select_cases(scenario, whole).empty())
      throw Error("--filter '" + run.filter + "' matches none of the " +
                  std::to_string(scenario.cases.size()) + " cases of " + scenario.path +
                  " (kvq run " + scenario.path + " --list shows their names)");
  }
  return select_cases(scenario, run);
}

// Per backend: how many checks it was given, how many ran and how many passed.
void print_backend_summary(const RunSummary& summary) {
  for (const BackendTally& t : summary.backends) {
    std::printf("  %-8s %d of %d checks ran, %d passed, %d failed", t.backend.c_str(), t.ran(),
                t.ran() + t.skipped, t.passed, t.failed);
    if (t.skipped) std::printf(", %d skipped (%s)", t.skipped, t.skip_reason.c_str());
    std::printf("%s\n", t.named ? "" : " [not named: every available backend]");
  }
}

int run_or_gate(int argc, char** argv, bool gate) {
  const std::string sub = gate ? "gate" : "run";
  po::options_description options("kvq " + sub + " SCENARIO.toml [options]\n\n" +
                                  (gate ? "Runs the scenario like `kvq run`; exits 1 when any "
                                          "check fails and lists each failure\n(case, backend, "
                                          "first mismatch, expected vs got, repro command), "
                                          "when a named backend\n(--backends, else the "
                                          "scenario's) skipped a check, or when no check ran.\n"
                                        : "Runs every case of the scenario on the selected "
                                          "backends, compares each with the reference\n(bitwise "
                                          "or against the fp64 oracle), prints a table and "
                                          "writes SQLite.\n") +
                                  "Scenario keys: docs/scenario-format.md.\n\nOptions");
  std::string scenario_path, backends, shard;
  std::vector<std::string> var_args;
  RunOptions run;
  options.add_options()("help,h", "this help")("db", po::value(&run.db)->default_value(run.db),
                                               "results database (SQLite, WAL)")(
      "backends", po::value(&backends),
      "comma-separated backends, e.g. ref,avx512 (default: "
      "the scenario's, else every available one)")("filter", po::value(&run.filter),
                                                   "regex on case names, e.g. '^quantize/'")(
      "list", "print the expanded case names (after --shard and --filter) and exit")(
      "shard", po::value(&shard),
      "i/n: only the cases whose index is i mod n (e.g. a Slurm array task; kvq merge)")(
      "var", po::value(&var_args)->composing(),
      "NAME=VALUE: fills ${NAME} in the scenario's strings, e.g. --var "
      "model=/data/gutenberg-llama.bin (repeatable)");
  bool allow_skip = false;
  if (gate)
    options.add_options()("allow-skip", po::bool_switch(&allow_skip),
                          "pass even when a named backend is unavailable or lacks an op, or "
                          "when no check ran (local use; CI should not)");
  const std::optional<po::variables_map> vm = parse_subcommand_options(
      argc, argv, options, "", PositionalArguments{"scenario", po::value(&scenario_path), 1});
  if (!vm) return 0;  // --help
  if (scenario_path.empty()) throw Error("missing SCENARIO.toml (kvq " + sub + " --help)");
  // SQLite would open "" as a temporary database and drop every result at exit.
  if (run.db.empty()) throw Error(sub + ": --db is empty (give the results database's path)");
  std::stringstream list(backends);
  for (std::string b; std::getline(list, b, ',');)
    if (!b.empty()) run.backends.push_back(b);
  if (!shard.empty()) parse_shard(shard, run);
  run.command = command_line(argc, argv);

  ScenarioVars vars;
  for (const std::string& v : var_args) {
    const size_t eq = v.find('=');
    if (eq == 0 || eq == std::string::npos)
      throw Error("--var '" + v + "': expected NAME=VALUE, e.g. --var model=/data/model.bin");
    vars[v.substr(0, eq)] = v.substr(eq + 1);
  }
  const Scenario scenario = load_scenario(scenario_path, vars);
  const std::vector<const ScenarioCase*> selected = cases_to_run(scenario, run);
  if (vm->count("list")) {
    for (const ScenarioCase* c : selected) std::printf("%s\n", c->name.c_str());
    return 0;
  }
  const RunSummary summary = run_scenario(scenario, run);
  std::printf("\n%d cases: %d checks passed, %d failed, %d skipped, %d measured (run %lld in %s)\n",
              summary.cases, summary.passed, summary.failed, summary.skipped, summary.measured,
              static_cast<long long>(summary.run_id), run.db.c_str());
  print_backend_summary(summary);
  if (!summary.failures.empty()) {
    std::printf("\nFailing checks (%zu):\n", summary.failures.size());
    for (const Failure& f : summary.failures) {
      if (f.where == "error") {
        std::printf("  %s [%s]: error: %s\n", f.case_name.c_str(), f.backend.c_str(),
                    f.got.c_str());
      } else {
        std::printf("  %s [%s]: first mismatch at %s[%lld]: expected %s, got %s\n",
                    f.case_name.c_str(), f.backend.c_str(), f.where.c_str(),
                    static_cast<long long>(f.first_mismatch), f.expected.c_str(), f.got.c_str());
      }
      std::printf("    repro: %s\n", f.repro.c_str());
    }
  }
  std::fflush(stdout);
  if (!gate) return 0;
  const std::string why = gate_failure(summary, allow_skip);
  if (why.empty()) return 0;
  std::fprintf(stderr, "kvq gate: FAIL: %s\n", why.c_str());
  return 1;
}

}  // namespace

int cmd_run(int argc, char** argv) {
  return run_or_gate(argc, argv, false);
}
int cmd_gate(int argc, char** argv) {
  return run_or_gate(argc, argv, true);
}

}  // namespace kvq
