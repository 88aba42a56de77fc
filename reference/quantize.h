// Asymmetric uniform quantization with packing, docs/spec.md §3.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace kvq {

enum class Axis : uint8_t { Token, Channel };
enum class ZeroPoint : uint8_t { Float, Int };

struct QuantParams {
  int bits = 2;                        // docs/spec.md §3: b in {1, 2, 3, 4, 8}
  int64_t group = 128;                 // G, clamped to the axis length
  Axis axis = Axis::Token;
  float clip = 1.0f;                   // r; 1.0 is a no-op
  ZeroPoint zero_point = ZeroPoint::Float;
};

// x is [rows, cols]: rows = tokens, cols = flattened channels (H_kv * d).
// Token axis: a group is G consecutive channels of one row. Channel axis: G consecutive rows of
// one column. Groups are numbered in memory order of their first element (row-major).
struct GroupLayout {
  int64_t rows = 0, cols = 0, group = 0;
  Axis axis = Axis::Token;
  int bits = 0;
  int64_t groups_per_line = 0;  // groups along the grouped axis (ceil(len / G))
  int64_t group_count = 0;
  // Group i: its element count, its first element (row, col), its stride between elements and
  // the byte offset of its packed stream in `codes`.
  int64_t group_size(int64_t i) const;
  int64_t first_element(int64_t i) const;  // flat index row * cols + col
  int64_t element_stride() const { return axis == Axis::Token ? 1 : cols; }
  int64_t byte_offset(int64_t i) const;
  int64_t total_bytes() const;
};
GroupLayout group_layout(int64_t rows, int64_t cols, const QuantParams& params);

struct Quantized {
  int64_t rows = 0, cols = 0;
  QuantParams params;
  std::vector<uint8_t> codes;     // packed group streams, group order (GroupLayout::byte_offset)
  std::vector<uint16_t> scale;    // fp16 bits, one per group
  std::vector<uint16_t> zero;     // fp16 bits per group (ZeroPoint::Float)
  std::vector<uint8_t> zero_int;  // integer zero point per group (ZeroPoint::Int)
};

// Throws kvq::Error naming `what` on bad bits, group <= 0, shape mismatch or non-finite input.
Quantized quantize(std::span<const float> x, int64_t rows, int64_t cols, const QuantParams& params,
                   const std::string& what = "x");
std::vector<float> dequantize(const Quantized& q);
// Zero-filled storage of a quantization of [rows, cols] laid out as l (codes, scales, zeros of
// the params' zero-point kind), for every backend's quantizer to fill.
Quantized make_quantized(int64_t rows, int64_t cols, const QuantParams& params,
                         const GroupLayout& l);
// Validation of a stored quantization against its layout (shared by every backend's dequantize
// and decode attention): codes, scales and zeros sized for l, every scale and zero finite.
// Throws kvq::Error naming `what` and the failing group.
void check_quantized(const Quantized& q, const GroupLayout& l, const std::string& what);

// Little-endian bitstream packing of one group's codes (code i at bits [b*i, b*i+b)).
void pack_codes(std::span<const uint8_t> codes, int bits, std::span<uint8_t> out);
void unpack_codes(std::span<const uint8_t> packed, int bits, std::span<uint8_t> codes);
// All codes of a Quantized in element order ([rows, cols]), unpacked.
std::vector<uint8_t> unpack_all(const Quantized& q);

// Bits per element of the stored form: b + 32 / G (scale + zero), docs/spec.md §3.
double quantized_bits_per_element(const QuantParams& params);

bool valid_bits(int bits);

}  // namespace kvq
