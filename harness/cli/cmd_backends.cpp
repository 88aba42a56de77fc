// `kvq backends`: what can run here, and why the rest cannot.
#include <cstdio>
#include <cstring>
#include <string>

#include "backends/backend.h"
#include "harness/cli/commands.h"

namespace kvq {

int cmd_backends(int argc, char** argv) {
  if (argc > 1 && (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h"))) {
    std::printf(
        "kvq backends: lists every backend compiled in, whether it can run on this\n"
        "machine (CPU features, GPU present) and why not when it cannot.\n"
        "kvq backends --available: only the names of the available ones, comma-separated\n"
        "(for scripts: kvq gate SCENARIO --backends \"$(kvq backends --available)\").\n");
    return 0;
  }
  if (argc > 1 && !std::strcmp(argv[1], "--available")) {
    std::string names;
    for (const BackendEntry& entry : backend_registry())
      if (entry.available) names += (names.empty() ? "" : ",") + entry.name;
    std::printf("%s\n", names.c_str());
    return 0;
  }
  std::printf("%-8s %-10s %s\n", "backend", "available", "detail");
  for (const BackendEntry& entry : backend_registry())
    std::printf("%-8s %-10s %s\n", entry.name.c_str(), entry.available ? "yes" : "no",
                entry.detail.c_str());
  return 0;
}

}  // namespace kvq
