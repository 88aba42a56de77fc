// SHA-256 (FIPS 180-4), used to fingerprint scenario files in the results store so a run names
// exactly the scenario bytes it ran.
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace kvq {

// Lower-case hex digest of `bytes`.
std::string sha256_hex(std::span<const uint8_t> bytes);
std::string sha256_hex(const std::string& text);
// Digest of a file's bytes; throws kvq::Error naming the path when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace kvq
