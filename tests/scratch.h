// A scratch folder of one test binary: <temp>/kvq_test_<pid>/NAME; <temp>/kvq_test_<pid> is
// removed with everything in it when the binary exits, so a test run leaves nothing in the temporary folder (scripts/test.sh
// runs the tests with a TMPDIR of their own and fails when anything is left there).
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>
#include <system_error>

namespace kvq::testing {

inline std::filesystem::path scratch_root(const std::string& name) {
  struct Root {
    std::filesystem::path dir;
    ~Root() {
      std::error_code ignored;  // at exit: nothing to report to
      std::filesystem::remove_all(dir, ignored);
    }
  };
  static Root root{std::filesystem::temp_directory_path() /
                   ("kvq_test_" + std::to_string(::getpid()))};
  return root.dir / name;
}

}  // namespace kvq::testing
