// `kvq merge A.db B.db ... -o ALL.db`: results stores of shards or machines combined into one
// (harness/store/merge.h); runs already in the output are skipped and listed.
#include <boost/program_options.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "harness/cli/cli_options.h"
#include "harness/cli/commands.h"
#include "harness/store/merge.h"
#include "reference/error.h"

namespace kvq {

int cmd_merge(int argc, char** argv) {
  namespace po = boost::program_options;
  po::options_description options(
      "kvq merge A.db B.db ... -o ALL.db\n\nAppends every run of the inputs (with its cases, "
      "checks and measurements, renumbered) to\nALL.db; a run already there (same start time, "
      "host, command and scenario hash) is\nskipped and listed, so merging a file twice changes "
      "nothing.\n\nOptions");
  std::string output;
  std::vector<std::string> inputs;
  options.add_options()("help,h", "this help")("output,o", po::value(&output),
                                               "output database (created when absent)");
  if (!parse_subcommand_options(argc, argv, options,
                                "merge: ", PositionalArguments{"inputs", po::value(&inputs), -1}))
    return 0;  // --help
  if (output.empty()) throw Error("merge: missing -o ALL.db (kvq merge --help)");
  if (inputs.empty()) throw Error("merge: no input databases (kvq merge --help)");

  const MergeSummary s = merge_results(inputs, output);
  for (const std::string& note : s.notes) std::printf("%s\n", note.c_str());
  std::printf("merged %lld runs (%lld cases, %lld checks, %lld measurements) into %s; %lld runs "
              "skipped as already present\n",
              static_cast<long long>(s.runs_added), static_cast<long long>(s.cases),
              static_cast<long long>(s.checks), static_cast<long long>(s.measurements),
              output.c_str(), static_cast<long long>(s.runs_skipped));
  return 0;
}

}  // namespace kvq
