#include "bench/sqlite_reporter.h"

#include <algorithm>
#include <cstdio>
#include <utility>

namespace kvq {

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// (max - min) / median over the repetitions: the spread column of the store.
double spread(const std::vector<double>& v, double med) {
  if (v.size() < 2 || med <= 0.0) return 0.0;
  const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  return (*hi - *lo) / med;
}

}  // namespace

SqliteReporter::SqliteReporter(std::vector<BenchEntry> entries, Store& store, int64_t run_id,
                               std::string repro_prefix)
    : entries_(std::move(entries)),
      store_(store),
      run_id_(run_id),
      repro_prefix_(std::move(repro_prefix)) {}

bool SqliteReporter::ReportContext(const Context& context) {
  std::printf("kvq bench: %d CPUs at %.0f MHz\n", context.cpu_info.num_cpus,
              context.cpu_info.cycles_per_second / 1e6);
  return true;
}

void SqliteReporter::ReportRuns(const std::vector<Run>& runs) {
  for (const Run& run : runs) {
    if (run.run_type != Run::RT_Iteration) continue;
    if (run.error_occurred) {
      std::fprintf(stderr, "kvq bench: %s failed: %s\n", run.run_name.function_name.c_str(),
                   run.error_message.c_str());
      continue;
    }
    if (run.iterations <= 0) continue;
    Samples& s = samples_[run.run_name.function_name];
    if (s.seconds.empty()) {  // progress: one line per measured (case, backend), as it finishes
      std::fprintf(stderr, "kvq bench: [%zu/%zu] %s\n", samples_.size(), entries_.size(),
                   run.run_name.function_name.c_str());
    }
    s.seconds.push_back(run.real_accumulated_time / static_cast<double>(run.iterations));
  }
}

void SqliteReporter::Finalize() {
  std::printf("%-52s %-8s %12s %9s %9s %9s\n", "case", "backend", "time/iter", "GB/s", "x memcpy",
              "x ref");
  std::vector<std::string> order;
  for (const BenchEntry& e : entries_)
    if (std::find(order.begin(), order.end(), e.case_name) == order.end())
      order.push_back(e.case_name);
  for (const std::string& name : order) {
    // The memcpy baseline of this case, measured in this run.
    double copy_gbps = 0.0, ref_time = 0.0;
    for (const BenchEntry& e : entries_) {
      if (e.case_name != name) continue;
      const auto it = samples_.find(e.case_name + "/" + e.backend);
      if (it == samples_.end() || it->second.seconds.empty()) continue;
      const double t = median(it->second.seconds);
      if (e.backend == "memcpy") copy_gbps = (e.bytes_read + e.bytes_written) / t / 1e9;
      if (e.backend == "ref") ref_time = t;
    }
    std::vector<Measurement> rows;
    CaseRecord record;
    record.name = name;
    for (const BenchEntry& e : entries_) {
      if (e.case_name != name) continue;
      const auto it = samples_.find(e.case_name + "/" + e.backend);
      if (it == samples_.end() || it->second.seconds.empty()) continue;
      const std::vector<double>& s = it->second.seconds;
      const double t = median(s);
      const double sp = spread(s, t);
      const auto reps = static_cast<int64_t>(s.size());
      const double gbps = (e.bytes_read + e.bytes_written) / t / 1e9;
      // The copy baseline is stored as bandwidth only, so results/speedup.sql (metric "time")
      // compares backends with ref and never with memcpy.
      if (e.backend != "memcpy") rows.push_back({e.backend, "time", t, "s", reps, sp});
      rows.push_back({e.backend, "bandwidth", gbps, "GB/s", reps, sp});
      const double frac = copy_gbps > 0.0 ? gbps / copy_gbps : 0.0;
      for (const BenchEntry::Extra& x : e.extra)
        rows.push_back({e.backend, x.metric, x.value, x.unit, 1, 0.0});
      if (e.backend != "memcpy") {
        rows.push_back({e.backend, "memcpy_fraction", frac, "ratio", reps, sp});
        record.op = e.op;
        record.params_json = e.params_json;
      }
      std::printf("%-52s %-8s %10.4g s %9.3g %9.3f %9s\n", name.c_str(), e.backend.c_str(), t, gbps,
                  frac,
                  ref_time > 0.0 && e.backend != "memcpy"
                      ? std::to_string(ref_time / t).substr(0, 6).c_str()
                      : "");
    }
    if (rows.empty()) continue;
    record.repro = repro_prefix_ + " --filter '^" + name + "/'";
    store_.add_case(run_id_, record, {}, rows);
    ++cases_written_;
  }
  std::fflush(stdout);
}

}  // namespace kvq
