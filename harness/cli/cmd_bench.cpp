// `kvq bench SCENARIO.toml [--db PATH] [--backends a,b] [--filter REGEX] [--min-time S]`:
// Google Benchmark over the scenario's (case, backend) pairs plus a memcpy of the same bytes,
// written to the results store by bench/sqlite_reporter (one store case per bench case).
#include <benchmark/benchmark.h>

#include <boost/program_options.hpp>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_ops.h"
#include "bench/sqlite_reporter.h"
#include "harness/cli/cli_options.h"
#include "harness/scenario/scenario.h"
#include "harness/store/store.h"
#include "harness/studies/studies.h"
#include "reference/error.h"

namespace kvq {

namespace po = boost::program_options;

namespace {

std::vector<std::string> split_commas(const std::vector<std::string>& values) {
  std::vector<std::string> out;
  for (const std::string& v : values) {
    std::stringstream ss(v);
    std::string item;
    while (std::getline(ss, item, ','))
      if (!item.empty()) out.push_back(item);
  }
  return out;
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  po::options_description options("kvq bench SCENARIO.toml [options]");
  std::string scenario, db = "results/kvq.db";
  std::vector<std::string> backends;
  BenchOptions bench;
  options.add_options()("help,h", "this help")("db", po::value(&db)->default_value(db),
                                               "results database (SQLite)")(
      "backends", po::value(&backends)->multitoken(),
      "backends to measure (comma or space separated; default: the scenario's)")(
      "filter", po::value(&bench.filter), "regex on 'case/backend'")(
      "min-time", po::value(&bench.min_time), "seconds per measurement (default 0.5)");
  const auto vm = parse_subcommand_options(
      argc, argv, options, "bench: ", PositionalArguments{"scenario", po::value(&scenario), 1});
  if (!vm) return 0;  // --help
  // Checked before any work: inf would never end a measurement, 0 or less means nothing.
  if (vm->count("min-time") && !(std::isfinite(bench.min_time) && bench.min_time > 0.0))
    throw Error("bench: --min-time must be a finite number of seconds > 0 (got " +
                std::to_string(bench.min_time) + ")");
  if (scenario.empty()) {
    std::cout << options << "\n";
    return 2;
  }
  bench.backends = split_commas(backends);

  // The scenario loader validates and expands the file; bench takes its synthetic op cases.
  const Scenario sc = load_scenario(scenario);
  std::vector<BenchSpec> specs;
  for (const ScenarioCase& c : sc.cases) {
    if (c.input != "synthetic" || find_study_op(c.op)) {
      std::fprintf(stderr,
                   "kvq: bench: %s (%s): only synthetic backend-op cases are measured (studies "
                   "run with kvq run), skipped\n",
                   c.name.c_str(), c.where.c_str());
      continue;
    }
    BenchSpec s = bench_spec_from_params(c.name, c.params, c.where);
    s.backends = c.backends.empty() ? sc.backends : c.backends;
    specs.push_back(std::move(s));
  }

  Store store(db);
  const int64_t run_id = store.begin_run(collect_run_info(scenario, command_line(argc, argv)));
  const std::vector<BenchEntry> entries = register_bench_cases(specs, bench);
  if (entries.empty()) {
    std::fprintf(stderr, "kvq: bench: nothing to measure in %s\n", scenario.c_str());
    store.finish_run(run_id, "failed");
    return 2;
  }
  std::string repro = "kvq bench " + scenario;
  if (!bench.backends.empty()) {
    repro += " --backends ";
    for (size_t i = 0; i < bench.backends.size(); ++i) repro += (i ? "," : "") + bench.backends[i];
  }
  SqliteReporter reporter(entries, store, run_id, repro);
  int bm_argc = 1;
  char name[] = "kvq-bench";
  char* bm_argv[] = {name, nullptr};
  benchmark::Initialize(&bm_argc, bm_argv);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  store.finish_run(run_id, "complete");
  std::printf("kvq bench: %d cases written to %s (run %lld)\n", reporter.cases_written(),
              db.c_str(), static_cast<long long>(run_id));
  return 0;
}

}  // namespace kvq
