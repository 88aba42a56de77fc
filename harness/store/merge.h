// `kvq merge`: results stores of several runs (shards of one sweep, a GPU run, other machines)
// combined into one (docs/design.md "Scale beyond one machine"). Rows get new ids in the output; a
// run already present (same started time, host, command and scenario hash) is skipped, so
// merging the same file twice changes nothing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvq {

struct MergeSummary {
  int64_t runs_added = 0, runs_skipped = 0, cases = 0, checks = 0, measurements = 0;
  std::vector<std::string> notes;  // one line per skipped or incomplete run
};

// Appends every run of each input, with its cases, checks and measurements, to `output`
// (created with the schema when absent). Each input is copied in one transaction: an input that
// fails leaves the output as it was before that input. Throws kvq::Error naming the file for a
// missing input, a file that is not a kvq results store of this schema version, or an input
// that is the output itself.
MergeSummary merge_results(const std::vector<std::string>& inputs, const std::string& output);

}  // namespace kvq
