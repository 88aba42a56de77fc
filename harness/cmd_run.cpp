// `kvq run SCENARIO` and `kvq gate SCENARIO`: the same run; gate exits 1 when a check fails.
#include <boost/program_options.hpp>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "harness/commands.h"
#include "harness/runner.h"
#include "harness/scenario.h"
#include "reference/error.h"

namespace kvq {

namespace {

namespace po = boost::program_options;

int run_or_gate(int argc, char** argv, bool gate) {
  const std::string sub = gate ? "gate" : "run";
  po::options_description options("kvq " + sub + " SCENARIO.toml [options]\n\n" +
                                  (gate ? "Runs the scenario like `kvq run`; exits 1 when any "
                                          "check fails and lists each failure\n(case, backend, "
                                          "first mismatch, expected vs got, repro command).\n"
                                        : "Runs every case of the scenario on the selected "
                                          "backends, compares each with the reference\n(bitwise "
                                          "or against the fp64 oracle), prints a table and "
                                          "writes SQLite.\n") +
                                  "Scenario keys: docs/scenario-format.md.\n\nOptions");
  std::string scenario_path, backends;
  RunOptions run;
  options.add_options()("help,h", "this help")(
      "db", po::value(&run.db)->default_value(run.db), "results database (SQLite, WAL)")(
      "backends", po::value(&backends), "comma-separated backends, e.g. ref,avx512 (default: "
                                        "the scenario's, else every available one)")(
      "filter", po::value(&run.filter), "regex on case names, e.g. '^quantize/'");
  po::options_description hidden;
  hidden.add_options()("scenario", po::value(&scenario_path));
  po::positional_options_description positional;
  positional.add("scenario", 1);
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
    std::cout << options << "\n";
    return 0;
  }
  if (scenario_path.empty()) throw Error("missing SCENARIO.toml (kvq " + sub + " --help)");
  std::stringstream list(backends);
  for (std::string b; std::getline(list, b, ',');)
    if (!b.empty()) run.backends.push_back(b);
  run.command = "kvq";
  for (int i = 0; i < argc; ++i) run.command += std::string(" ") + argv[i];

  const Scenario scenario = load_scenario(scenario_path);
  const RunSummary summary = run_scenario(scenario, run);
  std::printf("\n%d cases: %d checks passed, %d failed, %d skipped, %d measured -> %s\n",
              summary.cases, summary.passed, summary.failed, summary.skipped, summary.measured,
              run.db.c_str());
  if (!summary.failures.empty()) {
    std::printf("\nFailing checks:\n");
    for (const Failure& f : summary.failures)
      std::printf("  %s [%s]: first mismatch at %lld (%s), got %s\n    repro: %s\n",
                  f.case_name.c_str(), f.backend.c_str(), static_cast<long long>(f.first_mismatch),
                  f.expected.c_str(), f.got.c_str(), f.repro.c_str());
  }
  return gate && summary.failed ? 1 : 0;
}

}  // namespace

int cmd_run(int argc, char** argv) { return run_or_gate(argc, argv, false); }
int cmd_gate(int argc, char** argv) { return run_or_gate(argc, argv, true); }

}  // namespace kvq
