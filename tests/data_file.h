// The models, texts and recordings tests read ship in the repository's data/ folder
// (data/SOURCES.md); meson test sets $KVQ_DATA to it (tests/meson.build). A missing file is a
// test failure, never a skip: the repository is broken without it.
#pragma once

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace kvq::testing {

inline std::filesystem::path data_file(const std::string& name) {
  const char* dir = std::getenv("KVQ_DATA");
  INFO("KVQ_DATA is unset: run the test through meson test, or set it to the repository's data/");
  REQUIRE(dir != nullptr);
  const std::filesystem::path path = std::filesystem::path(dir) / name;
  INFO("data file " << path.string() << " is missing (data/SOURCES.md lists them)");
  REQUIRE(std::filesystem::is_regular_file(path));
  return path;
}

}  // namespace kvq::testing
