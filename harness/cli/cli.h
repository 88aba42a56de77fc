// The `kvq` command line: one table of subcommands (name, summary, example, entry point).
#pragma once

#include <span>

namespace kvq {

struct Subcommand {
  const char* name;
  const char* summary;
  const char* example;
  int (*run)(int argc, char** argv);
};

std::span<const Subcommand> subcommands();

// Dispatches argv[1] to its subcommand; prints errors as one line; returns the exit status.
int cli_main(int argc, char** argv);

}  // namespace kvq
