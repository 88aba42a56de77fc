// Google Benchmark registrations for `kvq bench` (docs/design.md "bench/"): one benchmark per
// (case, backend) of a scenario plus a memcpy of the same bytes in the same run, so every
// kernel's bandwidth is reported as a fraction of copy (STYLE.md rule 15).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "backends/backend.h"

namespace kvq {

// One expanded bench case (docs/scenario-format.md keys; synthetic input only).
struct BenchSpec {
  std::string name;  // stable expanded name, e.g. "rotate_quantize/T65536/b2"
  std::string op;    // op_name() spelling
  int64_t tokens = 128, heads = 8, head_dim = 128;
  int64_t n = 0;  // fwht size (0: heads * head_dim)
  int64_t hidden = 256, experts = 8, top_k = 2, q_heads = 32;
  DType dtype = DType::F32;  // rotate_quantize input
  QuantParams quant;
  AppendRotation rotation = AppendRotation::KeyGrouped;
  int head_group = 4;
  bool reorder = true;
  uint32_t seed = 1;
  int repetitions = 3;                // kvq bench: repetitions of each measurement
  std::vector<std::string> backends;  // empty: every available backend
  std::string params_json;            // the expanded parameters, for the store
};

// A bench spec from one expanded scenario case (harness/scenario/scenario.h ScenarioCase::params:
// every key with its expanded value); `where` ("FILE:LINE") prefixes errors.
BenchSpec bench_spec_from_params(const std::string& name, const nlohmann::json& params,
                                 const std::string& where);

struct BenchOptions {
  std::vector<std::string> backends;  // empty: the scenario's, else every available one
  std::string filter;                 // ECMAScript regex on "case/backend"; empty = all
  double min_time = 0.0;              // seconds per measurement; 0 = Google Benchmark default
};

// What one registered benchmark measures; its Google Benchmark name is case + "/" + backend
// (backend "memcpy" for the copy baseline of the case).
struct BenchEntry {
  std::string case_name, backend, op, params_json;
  double bytes_read = 0.0, bytes_written = 0.0;
  // Measured once outside the timing loop (e.g. peak device memory); stored beside the time.
  struct Extra {
    std::string metric;
    double value = 0.0;
    std::string unit;
  };
  std::vector<Extra> extra;
};

// Prepares inputs and registers the benchmarks (benchmark::RegisterBenchmark). The returned
// entries describe them in registration order; the inputs live until the process exits.
std::vector<BenchEntry> register_bench_cases(const std::vector<BenchSpec>& specs,
                                             const BenchOptions& options);

}  // namespace kvq
