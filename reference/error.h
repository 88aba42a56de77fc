// The project's one exception type: what failed and where (file, line, key, tensor, index).
// The CLI prints what() as one line on stderr and exits with code 2 (STYLE.md rule 5).
#pragma once

#include <stdexcept>
#include <string>

namespace kvq {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace kvq
