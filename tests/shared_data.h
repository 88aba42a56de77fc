// Tests that need ../shared (models, text, recordings) find it through $KVQ_SHARED (set by
// meson test). When it is absent the whole test binary skips: it prints why and exits with 77,
// which meson counts as skipped, not passed — unless an earlier test case of the binary failed:
// then it exits with 1, so a missing file never hides a failure.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace kvq::testing {

int failed_assertions_so_far();  // tests/catch_main.cpp

inline std::filesystem::path shared_file_or_skip(const std::string& relative) {
  const char* root = std::getenv("KVQ_SHARED");
  const std::filesystem::path path = std::filesystem::path(root ? root : "") / relative;
  if (!root || !std::filesystem::is_regular_file(path)) {
    std::printf("SKIP: %s not found (set KVQ_SHARED to the shared/ folder)\n", path.c_str());
    const int failed = failed_assertions_so_far();
    if (failed) std::printf("FAIL: %d assertions failed before the skip\n", failed);
    std::fflush(stdout);
    std::exit(failed ? 1 : 77);
  }
  return path;
}

}  // namespace kvq::testing
