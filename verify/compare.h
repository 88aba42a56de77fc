// Comparison of a backend's output with the reference's: bitwise (exact ops) or against a
// tolerance (attention), with the first mismatch located (STYLE.md rules 12, 13).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "reference/quantize.h"

namespace kvq {

struct Comparison {
  int64_t count = 0;           // elements compared
  int64_t mismatches = 0;      // elements whose bits differ (or exceed the tolerance)
  int64_t first_mismatch = -1;
  std::string where;           // which part mismatched first: "codes", "scale", "dequant", ...
  std::string expected, got;   // values at the first mismatch, as text (%a and decimal)
  double max_ulp = 0.0;        // largest ULP distance over all elements (fp32)
  double nmse = 0.0;           // sum (got-exp)^2 / sum exp^2 in fp64; 0 when both are all zero
  double max_rel_error = 0.0;  // max |got-exp| / max|exp| (tolerance gates)
  bool shape_mismatch = false;
  bool passed() const { return mismatches == 0 && !shape_mismatch; }
};

// Bitwise equality of fp32 values (-0 != +0; NaN never equal).
Comparison compare_bitwise(std::span<const float> expected, std::span<const float> got);
Comparison compare_bytes(std::span<const uint8_t> expected, std::span<const uint8_t> got);
Comparison compare_u16(std::span<const uint16_t> expected, std::span<const uint16_t> got);
Comparison compare_i32(std::span<const int32_t> expected, std::span<const int32_t> got);
// Codes, scales, zeros (float or int) and the dequantized values, all bitwise; `where` names the
// first part that differs.
Comparison compare_quantized(const Quantized& expected, const Quantized& got);
// Tolerance gate against an fp64 oracle: passes when max |got - oracle| / max |oracle| <= tol.
Comparison compare_tolerance(std::span<const double> oracle, std::span<const float> got, double tol);

// ULP distance between two finite fp32 values (ordered-integer difference).
double ulp_distance(float a, float b);
double nmse(std::span<const float> expected, std::span<const float> got);

}  // namespace kvq
