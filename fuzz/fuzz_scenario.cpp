// libFuzzer target: the scenario loader (harness/scenario/scenario.h) on arbitrary TOML text. Every
// input must either load or throw kvq::Error naming the file; a crash, a sanitizer report or
// another exception type is a bug. Recording paths in the input resolve next to the scratch file,
// where none exist. Build: meson setup -Dfuzz=true (clang).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "harness/scenario/scenario.h"
#include "reference/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/kvq_fuzz_scenario_" + std::to_string(::getpid()) + ".toml";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  if (size > 0) std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    const kvq::Scenario scenario = kvq::load_scenario(path);
    for (const kvq::ScenarioCase& c : scenario.cases) (void)c.params.dump();
  } catch (const kvq::Error&) {
    // Refused with a message: the expected outcome for hostile text.
  }
  return 0;
}
