// The `kvq` command line: one table of subcommands (name, summary, example, entry point).
#pragma once

#include <span>
#include <string>

namespace kvq {

struct Subcommand {
  const char* name;
  const char* summary;
  const char* example;
  int (*run)(int argc, char** argv);
};

std::span<const Subcommand> subcommands();

// "kvq VERSION (git REVISION)", what `kvq --version` prints.
std::string version_string(const char* version, const char* revision);

// Dispatches argv[1] to its subcommand (`kvq help SUB` is `kvq SUB --help`, `kvq --version`
// prints `version`); prints errors as one line; returns the exit status.
int cli_main(int argc, char** argv, const std::string& version = "kvq (version unknown)");

}  // namespace kvq
