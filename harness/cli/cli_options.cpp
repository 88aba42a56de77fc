#include "harness/cli/cli_options.h"

#include <cmath>
#include <iostream>
#include <sstream>

#include "reference/error.h"

namespace kvq {

namespace po = boost::program_options;

std::optional<po::variables_map> parse_subcommand_options(
    int argc, char** argv, const po::options_description& options, const std::string& error_prefix,
    const std::optional<PositionalArguments>& positional) {
  po::options_description all, hidden;
  po::positional_options_description positions;
  po::command_line_parser parser(argc, argv);
  if (positional) {
    hidden.add_options()(positional->name, positional->value);
    positions.add(positional->name, positional->max_count);
    all.add(options).add(hidden);
    parser.options(all).positional(positions);
  } else {
    // An empty positional description: a word that is not an option is an error (boost would
    // otherwise skip it silently, and `kvq record ... extra` would run as if it were not there).
    parser.options(options).positional(positions);
  }
  po::variables_map vm;
  try {
    po::store(parser.run(), vm);
    // --help before notify, so that it works without the required options.
    if (vm.count("help")) {
      std::cout << options << "\n";
      return std::nullopt;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw Error(error_prefix + e.what());
  }
  return vm;
}

void check_option_range(const std::string& option, double value, double lo, double hi,
                        bool low_open) {
  if (std::isfinite(value) && (low_open ? value > lo : value >= lo) && value <= hi) return;
  std::ostringstream range;
  range << (low_open ? "(" : "[") << lo << ", " << hi << "]";
  std::ostringstream got;
  got << value;
  throw Error("--" + option + " must be a finite number in " + range.str() + " (got " + got.str() +
              ")");
}

std::string command_line(int argc, char** argv) {
  std::string command = "kvq";
  for (int i = 0; i < argc; ++i) command += std::string(" ") + argv[i];
  return command;
}

po::options_description_easy_init add_llama2_input_options(po::options_description& options,
                                                           Llama2Inputs& inputs) {
  return options.add_options()("help,h", "this help")("model", po::value(&inputs.model)->required(),
                                                      "llama2.c checkpoint (.bin)")(
      "tokenizer", po::value(&inputs.tokenizer)->required(), "llama2.c tokenizer (.bin)")(
      "text", po::value(&inputs.text)->required(), "text file (UTF-8)");
}

po::options_description_easy_init add_study_options(po::options_description& options,
                                                    StudyInputs& inputs) {
  return options.add_options()("help,h", "this help")(
      "format", po::value(&inputs.format)->default_value(inputs.format), "table | csv | json")(
      "db", po::value(&inputs.db)->default_value(inputs.db),
      "results database (SQLite); empty: do not write");
}

bool parse_study_options(int argc, char** argv, const po::options_description& options,
                         StudyInputs& inputs) {
  if (!parse_subcommand_options(argc, argv, options, "",
                                PositionalArguments{"recording", po::value(&inputs.recording), 1}))
    return false;
  if (inputs.recording.empty())
    throw Error(std::string("missing the recording (kvq ") + argv[0] + " REC.safetensors)");
  if (inputs.format != "table" && inputs.format != "csv" && inputs.format != "json")
    throw Error("--format must be table, csv or json (got '" + inputs.format + "')");
  return true;
}

}  // namespace kvq
