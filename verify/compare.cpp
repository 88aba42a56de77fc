#include "verify/compare.h"

#include <bit>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <limits>

#include "reference/error.h"
#include "reference/half.h"
#include "reference/tensor.h"

namespace kvq {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

std::string float_text(float v) {
  char buf[96];
  std::snprintf(buf, sizeof(buf), "%a (%.9g)", static_cast<double>(v), static_cast<double>(v));
  return buf;
}

std::string double_text(double v) {
  char buf[96];
  std::snprintf(buf, sizeof(buf), "%a (%.17g)", v, v);
  return buf;
}

std::string u16_text(uint16_t v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "0x%04x (%.9g as fp16)", v,
                static_cast<double>(half_to_float(v)));
  return buf;
}

template <class T>
std::string int_text(T v) {
  return std::to_string(static_cast<int64_t>(v));
}

// Sizes differ: nothing element-wise is meaningful, so report the sizes.
Comparison size_mismatch(size_t expected, size_t got, const std::string& where) {
  Comparison c;
  c.shape_mismatch = true;
  c.where = where;
  c.expected = std::to_string(expected) + " elements";
  c.got = std::to_string(got) + " elements";
  return c;
}

// Element-wise exact comparison of integer-like values.
template <class T, class Text>
Comparison compare_exact(std::span<const T> expected, std::span<const T> got, const char* where,
                         Text text) {
  if (expected.size() != got.size()) return size_mismatch(expected.size(), got.size(), where);
  Comparison c;
  c.count = static_cast<int64_t>(expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    if (expected[i] == got[i]) continue;
    if (c.mismatches++ == 0) {
      c.first_mismatch = static_cast<int64_t>(i);
      c.where = where;
      c.expected = text(expected[i]);
      c.got = text(got[i]);
    }
  }
  return c;
}

bool any_nonfinite(std::span<const float> v) {
  for (float x : v)
    if (!std::isfinite(x)) return true;
  return false;
}

// Folds part `p` of a composite comparison into `total`: counts add up, the first part that
// mismatches names the location.
void fold(Comparison& total, const Comparison& p) {
  total.count += p.count;
  total.mismatches += p.mismatches;
  total.shape_mismatch = total.shape_mismatch || p.shape_mismatch;
  if (total.where.empty() && (p.mismatches > 0 || p.shape_mismatch)) {
    total.where = p.where;
    total.first_mismatch = p.first_mismatch;
    total.expected = p.expected;
    total.got = p.got;
  }
}

}  // namespace

double ulp_distance(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return kInf;
  if (std::isinf(a) || std::isinf(b)) return a == b ? 0.0 : kInf;
  // Map the sign-magnitude encoding onto a line of integers where adjacent floats differ by 1
  // (and -0, +0 both sit at 0).
  const auto key = [](float v) {
    const uint32_t bits = std::bit_cast<uint32_t>(v);
    const int64_t magnitude = bits & 0x7FFFFFFFu;
    return (bits >> 31) ? -magnitude : magnitude;
  };
  return static_cast<double>(std::llabs(key(a) - key(b)));
}

double nmse(std::span<const float> expected, std::span<const float> got) {
  if (expected.size() != got.size())
    throw Error("nmse: " + std::to_string(expected.size()) + " expected values but " +
                std::to_string(got.size()) + " got");
  // Non-finite values make the error unmeasurable: report it as infinite, never NaN (STYLE.md 12).
  if (any_nonfinite(expected) || any_nonfinite(got)) return kInf;
  double err = 0.0, ref = 0.0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const double e = expected[i], d = static_cast<double>(got[i]) - e;
    err += d * d;
    ref += e * e;
  }
  if (err == 0.0) return 0.0;
  return ref == 0.0 ? kInf : err / ref;
}

Comparison compare_bitwise(std::span<const float> expected, std::span<const float> got) {
  if (expected.size() != got.size()) return size_mismatch(expected.size(), got.size(), "values");
  Comparison c;
  c.count = static_cast<int64_t>(expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    const bool same = std::bit_cast<uint32_t>(expected[i]) == std::bit_cast<uint32_t>(got[i]) &&
                      !std::isnan(expected[i]);
    if (!same) {
      if (c.mismatches++ == 0) {
        c.first_mismatch = static_cast<int64_t>(i);
        c.where = "values";
        c.expected = float_text(expected[i]);
        c.got = float_text(got[i]);
      }
    }
    c.max_ulp = std::max(c.max_ulp, same ? 0.0 : ulp_distance(expected[i], got[i]));
  }
  c.nmse = nmse(expected, got);
  if (c.mismatches == 0) c.nmse = 0.0;
  const double rel_ref = [&] {
    double m = 0.0;
    for (float e : expected) m = std::max(m, std::fabs(static_cast<double>(e)));
    return m;
  }();
  for (size_t i = 0; i < expected.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - static_cast<double>(expected[i]));
    if (d == 0.0) continue;
    c.max_rel_error =
        std::max(c.max_rel_error, rel_ref > 0.0 && std::isfinite(d) ? d / rel_ref : kInf);
  }
  return c;
}

Comparison compare_bytes(std::span<const uint8_t> expected, std::span<const uint8_t> got) {
  return compare_exact(expected, got, "bytes", int_text<uint8_t>);
}

Comparison compare_u16(std::span<const uint16_t> expected, std::span<const uint16_t> got) {
  return compare_exact(expected, got, "u16", u16_text);
}

Comparison compare_i32(std::span<const int32_t> expected, std::span<const int32_t> got) {
  return compare_exact(expected, got, "i32", int_text<int32_t>);
}

Comparison compare_quantized(const Quantized& expected, const Quantized& got) {
  const QuantParams& pe = expected.params;
  const QuantParams& pg = got.params;
  if (expected.rows != got.rows || expected.cols != got.cols) {
    Comparison c;
    c.shape_mismatch = true;
    c.where = "shape";
    c.expected = shape_string({expected.rows, expected.cols});
    c.got = shape_string({got.rows, got.cols});
    return c;
  }
  if (pe.bits != pg.bits || pe.group != pg.group || pe.axis != pg.axis ||
      std::bit_cast<uint32_t>(pe.clip) != std::bit_cast<uint32_t>(pg.clip) ||
      pe.zero_point != pg.zero_point) {
    Comparison c;
    c.shape_mismatch = true;
    c.where = "params";
    const auto text = [](const QuantParams& p) {
      return "bits " + std::to_string(p.bits) + ", group " + std::to_string(p.group) + ", axis " +
             (p.axis == Axis::Token ? "token" : "channel") + ", clip " + float_text(p.clip) +
             ", zero " + (p.zero_point == ZeroPoint::Float ? "float" : "int");
    };
    c.expected = text(pe);
    c.got = text(pg);
    return c;
  }
  Comparison total;
  auto named = [](Comparison c, const char* where) {
    if (c.mismatches > 0 || c.shape_mismatch) c.where = where;
    return c;
  };
  fold(total, named(compare_bytes(expected.codes, got.codes), "codes"));
  fold(total, named(compare_u16(expected.scale, got.scale), "scale"));
  fold(total, named(compare_u16(expected.zero, got.zero), "zero"));
  fold(total, named(compare_bytes(expected.zero_int, got.zero_int), "zero_int"));
  if (total.shape_mismatch) return total;  // a malformed `got` cannot be dequantized safely
  const std::vector<float> de = dequantize(expected);
  const std::vector<float> dg = dequantize(got);
  const Comparison values = named(compare_bitwise(de, dg), "dequant");
  fold(total, values);
  total.max_ulp = values.max_ulp;
  total.nmse = values.nmse;
  total.max_rel_error = values.max_rel_error;
  return total;
}

Comparison compare_tolerance(std::span<const double> oracle, std::span<const float> got,
                             double tol) {
  if (oracle.size() != got.size()) return size_mismatch(oracle.size(), got.size(), "values");
  Comparison c;
  c.count = static_cast<int64_t>(oracle.size());
  double scale = 0.0;
  bool finite = true;
  for (double o : oracle) {
    finite = finite && std::isfinite(o);
    scale = std::max(scale, std::fabs(o));
  }
  double err = 0.0, ref = 0.0;
  for (size_t i = 0; i < oracle.size(); ++i) {
    const double o = oracle[i], g = got[i];
    const double d = std::fabs(g - o);
    // Non-finite values fail outright; |d| / max|oracle| otherwise (docs/spec.md §7 gate).
    double rel = kInf;
    if (std::isfinite(g) && std::isfinite(o)) rel = d == 0.0 ? 0.0 : (scale > 0 ? d / scale : kInf);
    c.max_rel_error = std::max(c.max_rel_error, rel);
    c.max_ulp = std::max(c.max_ulp, ulp_distance(static_cast<float>(o), got[i]));
    if (std::isfinite(d)) {
      err += d * d;
      ref += o * o;
    }
    if (!(rel <= tol)) {
      if (c.mismatches++ == 0) {
        c.first_mismatch = static_cast<int64_t>(i);
        c.where = "values";
        c.expected = double_text(o);
        c.got = float_text(got[i]);
      }
    }
  }
  if (!finite || any_nonfinite(got)) {
    c.nmse = kInf;
  } else {
    c.nmse = err == 0.0 ? 0.0 : (ref == 0.0 ? kInf : err / ref);
  }
  return c;
}

}  // namespace kvq
