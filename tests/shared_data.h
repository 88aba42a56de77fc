// Tests that need ../shared (models, text, recordings) find it through $KVQ_SHARED (set by
// meson test). When it is absent the whole test binary skips: it prints why and exits with 77,
// which meson counts as skipped, not passed.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace kvq::testing {

inline std::filesystem::path shared_file_or_skip(const std::string& relative) {
  const char* root = std::getenv("KVQ_SHARED");
  const std::filesystem::path path = std::filesystem::path(root ? root : "") / relative;
  if (!root || !std::filesystem::is_regular_file(path)) {
    std::printf("SKIP: %s not found (set KVQ_SHARED to the shared/ folder)\n", path.c_str());
    std::fflush(stdout);
    std::exit(77);
  }
  return path;
}

}  // namespace kvq::testing
