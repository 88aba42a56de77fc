// Sizes kvq accepts from files, scenarios and command lines. Each is checked before anything of
// that size is allocated or looped over, so that a few bytes of hostile input cannot ask for
// gigabytes or hours; the error names the key and the limit (issue 15).
#pragma once

#include <cstdint>
#include <string>

#include "reference/error.h"

namespace kvq {

constexpr int64_t kMaxExperts = int64_t{1} << 16;     // experts per MoE layer (models: <= 256)
constexpr int64_t kMaxCases = 100000;                 // expanded cases of one scenario
constexpr int64_t kMaxTextBytes = int64_t{1} << 26;   // a --text file (64 MiB)
constexpr int64_t kMaxElements = int64_t{1} << 31;    // values of one synthetic tensor (8 GiB)

// Throws kvq::Error "WHERE: KEY = VALUE exceeds the limit LIMIT" when value > limit.
inline void check_limit(const std::string& where, const std::string& key, int64_t value,
                        int64_t limit) {
  if (value > limit)
    throw Error(where + ": " + key + " = " + std::to_string(value) + " exceeds the limit " +
                std::to_string(limit));
}

}  // namespace kvq
