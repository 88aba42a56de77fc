// `kvq experts REC.safetensors [--format table|csv|json] [--db PATH] [--include-layers 0.75]
// [--tau-abs X] [--tau-rel X] [--top N]`: the Super Experts of a recording (docs/spec.md §5) and
// the massive activations that follow them (harness/studies/experts.h).
#include <boost/program_options.hpp>
#include <cstdio>
#include <iostream>
#include <string>

#include "harness/cli/cli_options.h"
#include "harness/cli/commands.h"
#include "harness/io/safetensors.h"
#include "harness/store/store.h"
#include "harness/studies/experts.h"

namespace kvq {

int cmd_experts(int argc, char** argv) {
  namespace po = boost::program_options;
  ExpertStudyParams p;
  StudyInputs in;
  po::options_description options(
      "kvq experts REC.safetensors [options]\n\nLists the Super Experts of a Mixture-of-Experts "
      "recording (docs/spec.md §5: m > P99.5 and m > floor(max / 10) over the first include_layers "
      "of the layers), scores them against planted super_experts when the metadata has them, "
      "and reports the residual-stream tokens that carry massive activations. csv and json "
      "print only the list on stdout; the rest goes to stderr.\n\nOptions");
  add_study_options(options, in)("include-layers",
                                 po::value(&p.selection.include_layers)->default_value(0.75),
                                 "fraction of layers considered: l < round(fraction * L)")(
      "tau-abs", po::value(&p.massive.tau_abs)->default_value(p.massive.tau_abs),
      "residual report: massive if max|h| >= this (docs/spec.md §4)")(
      "tau-rel", po::value(&p.massive.tau_rel)->default_value(p.massive.tau_rel),
      "residual report: and max|h| >= this x the median token")(
      "top", po::value(&p.top)->default_value(p.top),
      "table: also list the N strongest experts");
  if (!parse_study_options(argc, argv, options, in)) return 0;  // --help
  check_option_range("include-layers", p.selection.include_layers, 0.0, 1.0, true);
  check_option_range("tau-abs", p.massive.tau_abs, 0.0, 1e30);
  check_option_range("tau-rel", p.massive.tau_rel, 0.0, 1e30);
  check_option_range("top", static_cast<double>(p.top), 0.0, 1 << 24);

  const SafetensorsFile file = SafetensorsFile::open(in.recording);
  const ExpertStudy study = run_expert_study(file, p);
  print_expert_study(std::cout, &std::cerr, study, in.format);
  if (!in.db.empty()) {
    Store store(in.db);
    const int64_t run = store_expert_study(store, study, command_line(argc, argv));
    std::cout.flush();
    std::fprintf(stderr, "experts: run %lld written to %s\n", static_cast<long long>(run),
                 in.db.c_str());
  }
  return 0;
}

}  // namespace kvq
