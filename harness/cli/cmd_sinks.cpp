// `kvq sinks REC.safetensors [--format table|csv|json] [--db PATH] [--tau-mass X] [--pfn 1,4]
// [--tau-abs X] [--tau-rel X] [--tau-k X] [--top N]`: scores PFN, massive-activation sinks,
// pivot tokens and KVSink against the attention-mass ground truth of the recording
// (harness/studies/sinks.h).
#include <boost/program_options.hpp>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>

#include "harness/cli/cli_options.h"
#include "harness/cli/commands.h"
#include "harness/io/safetensors.h"
#include "harness/store/store.h"
#include "harness/studies/sinks.h"
#include "reference/error.h"

namespace kvq {

namespace {

std::vector<int64_t> parse_list(const std::string& text, const char* option) {
  std::vector<int64_t> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    int64_t v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size())
      throw Error(std::string("--") + option + ": '" + item + "' is not an integer (in '" + text +
                  "')");
    out.push_back(v);
  }
  if (out.empty()) throw Error(std::string("--") + option + ": empty list");
  return out;
}

}  // namespace

int cmd_sinks(int argc, char** argv) {
  namespace po = boost::program_options;
  SinkStudyParams p;
  StudyInputs in;
  std::string pfn = "1,4", rule = "token";
  po::options_description options(
      "kvq sinks REC.safetensors [options]\n\nScores the sink predictors of docs/spec.md §4 (PFN, "
      "massive activations, pivot tokens, KVSink) against the attention-mass ground truth "
      "recomputed in fp64 from the recording's q and k, and against planted sinks when its "
      "metadata has sink_tokens.\n\nOptions");
  add_study_options(options, in)("tau-mass", po::value(&p.tau_mass)->default_value(p.tau_mass),
                                 "ground truth: j is a sink if score_j >= this")(
      "pfn", po::value(&pfn)->default_value(pfn), "PFN sizes N, comma-separated")(
      "tau-abs", po::value(&p.massive.tau_abs)->default_value(p.massive.tau_abs),
      "massive if max|h| >= this (docs/spec.md §4; also finds KVSink's l*, C*)")(
      "tau-rel", po::value(&p.massive.tau_rel)->default_value(p.massive.tau_rel),
      "and max|h| >= this x the median token (token rule) or the channel's median (channel)")(
      "massive-rule", po::value(&rule)->default_value(rule),
      "token (docs/spec.md §4: a token's max |h| against the median token's) or channel (each "
      "|h[t,c]| against channel c's median over the tokens)")(
      "tau-k", po::value(&p.kvsink.tau_k)->default_value(p.kvsink.tau_k),
      "KVSink: sink if max over C* >= this x the median")(
      "top", po::value(&p.top)->default_value(p.top), "print the scores of the top N tokens");
  if (!parse_study_options(argc, argv, options, in)) return 0;  // --help
  p.pfn = parse_list(pfn, "pfn");
  p.massive.rule = parse_massive_rule(rule);
  constexpr double kHuge = 1e30;
  check_option_range("tau-mass", p.tau_mass, 0.0, kHuge, true);
  for (const int64_t n : p.pfn) check_option_range("pfn", static_cast<double>(n), 1.0, 1 << 24);
  check_option_range("tau-abs", p.massive.tau_abs, 0.0, kHuge);
  check_option_range("tau-rel", p.massive.tau_rel, 0.0, kHuge);
  check_option_range("tau-k", p.kvsink.tau_k, 0.0, kHuge);
  check_option_range("top", static_cast<double>(p.top), 0.0, 1 << 24);

  const SafetensorsFile file = SafetensorsFile::open(in.recording);
  const SinkStudy study = run_sink_study(file, p);
  print_sink_study(std::cout, study, in.format);
  if (!in.db.empty()) {
    Store store(in.db);
    const int64_t run = store_sink_study(store, study, command_line(argc, argv));
    std::cout.flush();
    std::fprintf(stderr, "sinks: run %lld (%zu cases) written to %s\n",
                 static_cast<long long>(run), study.predictors.size(), in.db.c_str());
  }
  return 0;
}

}  // namespace kvq
