// What the `kvq` subcommands share in reading their options (boost::program_options): one parse
// with --help and one-line errors, the command line as stored with a run, and the inputs of the
// llama2.c subcommands and of the study subcommands.
#pragma once

#include <boost/program_options.hpp>
#include <optional>
#include <string>

namespace kvq {

// Positional arguments, stored in the hidden option `name` (absent from --help; a user may also
// write --NAME): at most `max_count` of them, -1 for any number. `value` is po::value(&x); the
// parse takes ownership.
struct PositionalArguments {
  const char* name;
  const boost::program_options::value_semantic* value;
  int max_count;
};

// Parses a subcommand's argv (argv[0] is the subcommand) against `options`, and `positional` when
// given; without it, a word that is not an option is an error. With --help: prints `options` and a
// newline on stdout and returns nothing, the caller exits 0; required options are not checked
// then. Otherwise stores every value in its variable, checks the required options and returns
// the variables. Any parse error throws kvq::Error(error_prefix + the parser's message), which the
// CLI prints as one line with exit status 2 (STYLE.md rule 5).
std::optional<boost::program_options::variables_map> parse_subcommand_options(
    int argc, char** argv, const boost::program_options::options_description& options,
    const std::string& error_prefix,
    const std::optional<PositionalArguments>& positional = std::nullopt);

// Throws kvq::Error "--OPTION must be a finite number in [LO, HI] (got V)" unless `value` is
// finite and within [lo, hi], or (lo, hi] when `low_open`: checked before any work is done.
void check_option_range(const std::string& option, double value, double lo, double hi,
                        bool low_open = false);

// "kvq SUBCOMMAND ARGS..." as typed (argv[0] is the subcommand): the command a run records.
std::string command_line(int argc, char** argv);

// The inputs of the subcommands that run a llama2.c model over a text (kvq record, kvq ppl).
struct Llama2Inputs {
  std::string model, tokenizer, text;
};

// Adds --help and the required --model, --tokenizer and --text to `options`; returns the adder
// so that the subcommand's own options follow in its --help.
boost::program_options::options_description_easy_init add_llama2_input_options(
    boost::program_options::options_description& options, Llama2Inputs& inputs);

// The inputs of the subcommands that study a recording (kvq sinks, kvq experts).
struct StudyInputs {
  std::string recording;         // the positional REC.safetensors
  std::string format = "table";  // table | csv | json
  std::string db;                // results database; empty: do not write
};

// Adds --help, --format and --db to `options`; returns the adder so that the subcommand's own
// options follow in its --help.
boost::program_options::options_description_easy_init add_study_options(
    boost::program_options::options_description& options, StudyInputs& inputs);

// parse_subcommand_options with the recording as the one positional argument, then checks that
// it is given and that --format is table, csv or json (kvq::Error otherwise). Returns false
// after --help.
bool parse_study_options(int argc, char** argv,
                         const boost::program_options::options_description& options,
                         StudyInputs& inputs);

}  // namespace kvq
