// Asymmetric uniform quantization with packing, written as docs/spec.md §3 states it.
//
// Specification notes (choices where docs/spec.md §3 leaves room; README "Specification notes"):
// - Clip ratio r must be finite and > 0; lo and hi are always multiplied by r (exact when
//   r == 1.0, so the no-op case needs no branch).
// - ZeroPoint::Int (RotateKV's integer zero point): s32 = (hi - lo) / (2^b - 1) in fp32 is used
//   to quantize (SPEC: "fp32, not rounded to fp16"): zp = clamp(rne(-lo / s32), 0, 2^b - 1),
//   stored as uint8 (the clamp keeps zp storable when the group does not straddle 0);
//   q = clamp(rne(x / s32) + zp, 0, 2^b - 1). The stored scale is fp16(s32), and dequantize
//   reconstructs from what is stored: x_hat = fp32(scale16) * (float)(q - zp), one rounding
//   (q - zp is an exact small integer). fp16(s32) overflowing to inf is an error, as in Float.
//   When s32 == 0 (constant group after clipping) every code is 0 and zp = 0, so the group
//   reconstructs as 0: the integer-zero-point format has no offset to hold a constant.
// - Bits per element count the stored scale and zero: b + 32 / G (Float, two fp16 per group)
//   and b + 24 / G (Int: fp16 scale + uint8 zero point), with G the requested group size
//   (the clamp to the axis length depends on the tensor, not on the params).
#include "reference/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include "reference/error.h"
#include "reference/half.h"
#include "reference/tensor.h"

namespace kvq {

namespace {

int64_t stream_bytes(int64_t count, int bits) {
  return (count * bits + 7) / 8;
}

bool half_is_finite(uint16_t h) {
  return (h & 0x7C00u) != 0x7C00u;
}

void check_params(const QuantParams& params, const std::string& what) {
  if (!valid_bits(params.bits))
    throw Error(what + ": bits = " + std::to_string(params.bits) + " is not one of 1, 2, 3, 4, 8");
  if (params.group <= 0)
    throw Error(what + ": group size G = " + std::to_string(params.group) + " must be positive");
  if (!std::isfinite(params.clip) || !(params.clip > 0.0f))
    throw Error(what + ": clip ratio " + std::to_string(params.clip) +
                " must be finite and positive");
  if (params.axis != Axis::Token && params.axis != Axis::Channel)
    throw Error(what + ": unknown axis " + std::to_string(static_cast<int>(params.axis)));
  if (params.zero_point != ZeroPoint::Float && params.zero_point != ZeroPoint::Int)
    throw Error(what + ": unknown zero_point mode " +
                std::to_string(static_cast<int>(params.zero_point)));
}

GroupLayout make_layout(int64_t rows, int64_t cols, const QuantParams& params,
                        const std::string& what) {
  check_params(params, what);
  if (rows < 0 || cols < 0)
    throw Error(what + ": negative shape [" + std::to_string(rows) + ", " + std::to_string(cols) +
                "]");
  shape_numel({rows, cols}, what);  // overflow check
  GroupLayout layout;
  layout.rows = rows;
  layout.cols = cols;
  layout.axis = params.axis;
  layout.bits = params.bits;
  // G is clamped to the length of the grouped axis (docs/spec.md §3).
  const int64_t length = params.axis == Axis::Token ? cols : rows;
  const int64_t lines = params.axis == Axis::Token ? rows : cols;
  layout.group = length > 0 ? std::min(params.group, length) : params.group;
  layout.groups_per_line = length > 0 ? (length + layout.group - 1) / layout.group : 0;
  layout.group_count = lines * layout.groups_per_line;
  return layout;
}

// Element count of the last (tail) group along the grouped axis.
int64_t tail_size(const GroupLayout& l) {
  const int64_t length = l.axis == Axis::Token ? l.cols : l.rows;
  return length - (l.groups_per_line - 1) * l.group;
}

void check_group_index(int64_t i, int64_t end) {
  if (i < 0 || i >= end)
    throw Error("group layout: group index " + std::to_string(i) + " is outside [0, " +
                std::to_string(end) + ")");
}

// "group 5 (row 0, col 640, 128 elements)": where a failing group sits.
std::string describe_group(const GroupLayout& l, int64_t i) {
  const int64_t first = l.first_element(i);
  return "group " + std::to_string(i) + " (row " + std::to_string(first / l.cols) + ", col " +
         std::to_string(first % l.cols) + ", " + std::to_string(l.group_size(i)) + " elements)";
}

// Per-group statistics of docs/spec.md §3, before any code is computed.
struct GroupStats {
  float lo = 0.0f;     // min(x) * r
  float hi = 0.0f;     // max(x) * r
  float range = 0.0f;  // (hi - lo) / (2^b - 1), fp32
  uint16_t scale16 = 0;
  uint16_t zero16 = 0;
};

GroupStats group_stats(const float* x, int64_t n, int64_t stride, const QuantParams& params) {
  float lo = x[0];
  float hi = x[0];
  for (int64_t k = 1; k < n; ++k) {
    const float v = x[k * stride];
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  GroupStats g;
  g.lo = lo * params.clip;
  g.hi = hi * params.clip;
  g.range = (g.hi - g.lo) / static_cast<float>((1 << params.bits) - 1);
  g.scale16 = float_to_half(g.range);
  g.zero16 = float_to_half(g.lo);
  return g;
}

bool stats_ok(const GroupStats& g, ZeroPoint mode) {
  return half_is_finite(g.scale16) && (mode == ZeroPoint::Int || half_is_finite(g.zero16));
}

// Sets code value `code` (< 2^bits) as element i of the little-endian bitstream at `out`,
// whose bytes start zeroed.
inline void put_code(uint8_t* out, int64_t i, int bits, uint32_t code) {
  const int64_t bit = i * bits;
  const int64_t byte = bit >> 3;
  const int shift = static_cast<int>(bit & 7);
  out[byte] = static_cast<uint8_t>(out[byte] | ((code << shift) & 0xFFu));
  if (shift + bits > 8) out[byte + 1] = static_cast<uint8_t>(out[byte + 1] | (code >> (8 - shift)));
}

inline uint32_t get_code(const uint8_t* in, int64_t i, int bits) {
  const int64_t bit = i * bits;
  const int64_t byte = bit >> 3;
  const int shift = static_cast<int>(bit & 7);
  uint32_t v = static_cast<uint32_t>(in[byte]) >> shift;
  if (shift + bits > 8) v |= static_cast<uint32_t>(in[byte + 1]) << (8 - shift);
  return v & ((1u << bits) - 1u);
}

// rne(v) = std::nearbyint under the default rounding mode (round half to even, docs/spec.md §0),
// then clamp to [0, maxq]; the clamp happens in float so no out-of-range conversion occurs.
inline uint32_t clamp_code(float v, float maxq) {
  v = std::max(v, 0.0f);
  v = std::min(v, maxq);
  return static_cast<uint32_t>(v);
}

void quantize_group(const float* x, int64_t n, int64_t stride, const QuantParams& params,
                    const GroupStats& g, uint8_t* out, uint8_t* zero_int) {
  const int bits = params.bits;
  const float maxq = static_cast<float>((1 << bits) - 1);
  if (params.zero_point == ZeroPoint::Float) {
    const float s = half_to_float(g.scale16);
    const float z = half_to_float(g.zero16);
    if (s == 0.0f) return;  // every code is 0; `out` is already zeroed
    for (int64_t k = 0; k < n; ++k) {
      const float t = x[k * stride] - z;
      const float u = t / s;
      put_code(out, k, bits, clamp_code(std::nearbyint(u), maxq));
    }
    return;
  }
  // ZeroPoint::Int: quantize with the fp32 scale (see the notes at the top of this file).
  const float s = g.range;
  if (s == 0.0f) {
    *zero_int = 0;
    return;
  }
  const uint32_t zp = clamp_code(std::nearbyint(-g.lo / s), maxq);
  *zero_int = static_cast<uint8_t>(zp);
  const float zpf = static_cast<float>(zp);
  for (int64_t k = 0; k < n; ++k) {
    const float u = x[k * stride] / s;
    put_code(out, k, bits, clamp_code(std::nearbyint(u) + zpf, maxq));
  }
}

}  // namespace

Quantized make_quantized(int64_t rows, int64_t cols, const QuantParams& params,
                         const GroupLayout& l) {
  Quantized q;
  q.rows = rows;
  q.cols = cols;
  q.params = params;
  q.codes.assign(static_cast<size_t>(l.total_bytes()), 0);
  q.scale.assign(static_cast<size_t>(l.group_count), 0);
  if (params.zero_point == ZeroPoint::Float)
    q.zero.assign(static_cast<size_t>(l.group_count), 0);
  else
    q.zero_int.assign(static_cast<size_t>(l.group_count), 0);
  return q;
}

void check_quantized(const Quantized& q, const GroupLayout& l, const std::string& what) {
  if (static_cast<int64_t>(q.codes.size()) != l.total_bytes())
    throw Error(what + ": codes hold " + std::to_string(q.codes.size()) + " bytes, layout needs " +
                std::to_string(l.total_bytes()));
  if (static_cast<int64_t>(q.scale.size()) != l.group_count)
    throw Error(what + ": " + std::to_string(q.scale.size()) + " scales for " +
                std::to_string(l.group_count) + " groups");
  const bool is_float = q.params.zero_point == ZeroPoint::Float;
  const size_t zeros = is_float ? q.zero.size() : q.zero_int.size();
  if (static_cast<int64_t>(zeros) != l.group_count)
    throw Error(what + ": " + std::to_string(zeros) + (is_float ? " zeros" : " integer zeros") +
                " for " + std::to_string(l.group_count) + " groups");
  // A branch-free pass first (it vectorizes: decode attention checks a whole cache per query),
  // then the first failing group is looked for only when one exists.
  const uint16_t* scale = q.scale.data();
  const uint16_t* zero = is_float ? q.zero.data() : q.scale.data();
  unsigned bad = 0;
  for (int64_t i = 0; i < l.group_count; ++i)
    bad |= static_cast<unsigned>((scale[i] & 0x7C00u) == 0x7C00u) |
           static_cast<unsigned>((zero[i] & 0x7C00u) == 0x7C00u);
  if (bad == 0) return;
  for (int64_t i = 0; i < l.group_count; ++i) {
    if (!half_is_finite(q.scale[i]) || (is_float && !half_is_finite(q.zero[i])))
      throw Error(what + ": " + describe_group(l, i) + " has a non-finite scale or zero");
  }
}

int64_t GroupLayout::group_size(int64_t i) const {
  check_group_index(i, group_count);
  const int64_t gi = axis == Axis::Token ? i % groups_per_line : i / cols;
  return gi == groups_per_line - 1 ? tail_size(*this) : group;
}

int64_t GroupLayout::first_element(int64_t i) const {
  check_group_index(i, group_count);
  // Token axis: group gi of row r starts at (r, gi*G). Channel axis: group i covers row block
  // rb = i / cols of column c = i % cols and starts at (rb*G, c); numbering by i is then the
  // memory order of first elements (docs/spec.md §3).
  if (axis == Axis::Token) return (i / groups_per_line) * cols + (i % groups_per_line) * group;
  return (i / cols) * group * cols + i % cols;
}

int64_t GroupLayout::byte_offset(int64_t i) const {
  if (i == group_count) return total_bytes();
  check_group_index(i, group_count);
  const int64_t full = stream_bytes(group, bits);
  if (axis == Axis::Token) {
    const int64_t line = (groups_per_line - 1) * full + stream_bytes(tail_size(*this), bits);
    return (i / groups_per_line) * line + (i % groups_per_line) * full;
  }
  const int64_t rb = i / cols;
  return rb * cols * full + (i % cols) * stream_bytes(group_size(i), bits);
}

int64_t GroupLayout::total_bytes() const {
  if (group_count == 0) return 0;
  const int64_t full = stream_bytes(group, bits);
  const int64_t tail = stream_bytes(tail_size(*this), bits);
  const int64_t lines = group_count / groups_per_line;
  return lines * ((groups_per_line - 1) * full + tail);
}

GroupLayout group_layout(int64_t rows, int64_t cols, const QuantParams& params) {
  return make_layout(rows, cols, params, "group_layout");
}

bool valid_bits(int bits) {
  return bits == 1 || bits == 2 || bits == 3 || bits == 4 || bits == 8;
}

double quantized_bits_per_element(const QuantParams& params) {
  check_params(params, "quantized_bits_per_element");
  const double per_group = params.zero_point == ZeroPoint::Float ? 32.0 : 24.0;
  return params.bits + per_group / static_cast<double>(params.group);
}

Quantized quantize(std::span<const float> x, int64_t rows, int64_t cols, const QuantParams& params,
                   const std::string& what) {
  const GroupLayout l = make_layout(rows, cols, params, what);
  if (static_cast<int64_t>(x.size()) != rows * cols)
    throw Error(what + ": input has " + std::to_string(x.size()) + " values, shape [" +
                std::to_string(rows) + ", " + std::to_string(cols) + "] needs " +
                std::to_string(rows * cols));
  require_finite(x, what);

  Quantized q = make_quantized(rows, cols, params, l);

  // Groups are independent and each writes its own byte range (streams start on byte
  // boundaries), so the result does not depend on the thread count. A failing group is
  // reported after the loop (the lowest index), since exceptions cannot leave the region.
  int64_t first_bad = l.group_count;
  const int64_t stride = l.element_stride();
#pragma omp parallel for schedule(static) reduction(min : first_bad) if (rows * cols > 65536)
  for (int64_t i = 0; i < l.group_count; ++i) {
    const float* gx = x.data() + l.first_element(i);
    const int64_t n = l.group_size(i);
    const GroupStats g = group_stats(gx, n, stride, params);
    if (!stats_ok(g, params.zero_point)) {
      first_bad = std::min(first_bad, i);
      continue;
    }
    q.scale[i] = g.scale16;
    if (params.zero_point == ZeroPoint::Float) q.zero[i] = g.zero16;
    uint8_t* zi = params.zero_point == ZeroPoint::Int ? &q.zero_int[i] : nullptr;
    quantize_group(gx, n, stride, params, g, q.codes.data() + l.byte_offset(i), zi);
  }
  if (first_bad < l.group_count) {
    const GroupStats g =
        group_stats(x.data() + l.first_element(first_bad), l.group_size(first_bad), stride, params);
    const bool scale_bad = !half_is_finite(g.scale16);
    throw Error(what + ": " + describe_group(l, first_bad) + ": " +
                (scale_bad ? "scale (hi - lo) / (2^b - 1) = " + std::to_string(g.range)
                           : "zero lo = " + std::to_string(g.lo)) +
                " overflows fp16");
  }
  return q;
}

std::vector<float> dequantize(const Quantized& q) {
  const std::string what = "dequantize";
  const GroupLayout l = make_layout(q.rows, q.cols, q.params, what);
  check_quantized(q, l, what);
  std::vector<float> out(static_cast<size_t>(q.rows * q.cols));
  const int bits = q.params.bits;
  const int64_t stride = l.element_stride();
#pragma omp parallel for schedule(static) if (q.rows * q.cols > 65536)
  for (int64_t i = 0; i < l.group_count; ++i) {
    const uint8_t* in = q.codes.data() + l.byte_offset(i);
    float* gx = out.data() + l.first_element(i);
    const int64_t n = l.group_size(i);
    const float s = half_to_float(q.scale[i]);
    if (q.params.zero_point == ZeroPoint::Float) {
      const float z = half_to_float(q.zero[i]);
      for (int64_t k = 0; k < n; ++k)  // x_hat = fma((float)q, s, z), docs/spec.md §3
        gx[k * stride] = std::fma(static_cast<float>(get_code(in, k, bits)), s, z);
    } else {
      const int zp = q.zero_int[i];
      for (int64_t k = 0; k < n; ++k) {
        const int code = static_cast<int>(get_code(in, k, bits));
        gx[k * stride] = s * static_cast<float>(code - zp);
      }
    }
  }
  return out;
}

void pack_codes(std::span<const uint8_t> codes, int bits, std::span<uint8_t> out) {
  if (!valid_bits(bits))
    throw Error("pack_codes: bits = " + std::to_string(bits) + " is not one of 1, 2, 3, 4, 8");
  const auto n = static_cast<int64_t>(codes.size());
  const int64_t need = stream_bytes(n, bits);
  if (static_cast<int64_t>(out.size()) < need)
    throw Error("pack_codes: output has " + std::to_string(out.size()) + " bytes, " +
                std::to_string(n) + " codes of " + std::to_string(bits) + " bits need " +
                std::to_string(need));
  const uint32_t limit = 1u << bits;
  for (int64_t k = 0; k < n; ++k)
    if (codes[k] >= limit)
      throw Error("pack_codes: code " + std::to_string(codes[k]) + " at index " +
                  std::to_string(k) + " does not fit " + std::to_string(bits) + " bits");
  std::fill(out.begin(), out.begin() + need, uint8_t{0});  // zero bits pad the last byte
  for (int64_t k = 0; k < n; ++k) put_code(out.data(), k, bits, codes[k]);
}

void unpack_codes(std::span<const uint8_t> packed, int bits, std::span<uint8_t> codes) {
  if (!valid_bits(bits))
    throw Error("unpack_codes: bits = " + std::to_string(bits) + " is not one of 1, 2, 3, 4, 8");
  const auto n = static_cast<int64_t>(codes.size());
  const int64_t need = stream_bytes(n, bits);
  if (static_cast<int64_t>(packed.size()) < need)
    throw Error("unpack_codes: input has " + std::to_string(packed.size()) + " bytes, " +
                std::to_string(n) + " codes of " + std::to_string(bits) + " bits need " +
                std::to_string(need));
  for (int64_t k = 0; k < n; ++k) codes[k] = static_cast<uint8_t>(get_code(packed.data(), k, bits));
}

std::vector<uint8_t> unpack_all(const Quantized& q) {
  const std::string what = "unpack_all";
  const GroupLayout l = make_layout(q.rows, q.cols, q.params, what);
  if (static_cast<int64_t>(q.codes.size()) != l.total_bytes())
    throw Error(what + ": codes hold " + std::to_string(q.codes.size()) + " bytes, layout needs " +
                std::to_string(l.total_bytes()));
  std::vector<uint8_t> out(static_cast<size_t>(q.rows * q.cols));
  const int64_t stride = l.element_stride();
#pragma omp parallel for schedule(static) if (q.rows * q.cols > 65536)
  for (int64_t i = 0; i < l.group_count; ++i) {
    const uint8_t* in = q.codes.data() + l.byte_offset(i);
    uint8_t* gx = out.data() + l.first_element(i);
    const int64_t n = l.group_size(i);
    for (int64_t k = 0; k < n; ++k)
      gx[k * stride] = static_cast<uint8_t>(get_code(in, k, q.params.bits));
  }
  return out;
}

}  // namespace kvq
