// Stand-alone `kvq bench` (same arguments) for use until harness/cli registers the subcommand.
#include <cstdio>
#include <exception>

#include "reference/error.h"

namespace kvq {
int cmd_bench(int argc, char** argv);
}

int main(int argc, char** argv) {
  try {
    return kvq::cmd_bench(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
}
