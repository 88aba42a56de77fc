// A Google Benchmark reporter that writes every measurement of `kvq bench` into the results
// store (harness/store/store.h) and prints one table line per (case, backend); while the
// benchmarks run it prints one progress line per finished (case, backend) to stderr. It is the
// only writer: the numbers in SQLite are Google Benchmark's own repetitions, never a second
// timing loop.
#pragma once

#include <benchmark/benchmark.h>

#include <map>
#include <string>
#include <vector>

#include "bench/bench_ops.h"
#include "harness/store/store.h"

namespace kvq {

class SqliteReporter : public benchmark::BenchmarkReporter {
 public:
  // entries: what register_bench_cases registered; store and run_id: where rows go.
  SqliteReporter(std::vector<BenchEntry> entries, Store& store, int64_t run_id,
                 std::string repro_prefix);

  bool ReportContext(const Context& context) override;
  void ReportRuns(const std::vector<Run>& runs) override;
  // Writes one store case per bench case (time, bandwidth, memcpy_fraction per backend) and
  // prints the table.
  void Finalize() override;

  int cases_written() const { return cases_written_; }

 private:
  struct Samples {
    std::vector<double> seconds;  // per iteration, one per repetition
  };
  std::vector<BenchEntry> entries_;
  Store& store_;
  int64_t run_id_;
  std::string repro_prefix_;
  std::map<std::string, Samples> samples_;  // "case/backend" -> repetitions
  int cases_written_ = 0;
};

}  // namespace kvq
