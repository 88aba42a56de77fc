#include "reference/tensor.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "reference/error.h"
#include "reference/half.h"

namespace kvq {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::I32: return 4;
    case DType::U8: return 1;
  }
  throw Error("unknown dtype");
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I32: return "I32";
    case DType::U8: return "U8";
  }
  return "?";
}

int64_t shape_numel(const Shape& shape, const std::string& what) {
  int64_t n = 1;
  for (int64_t dim : shape) {
    if (dim < 0) throw Error(what + ": negative dimension in shape " + shape_string(shape));
    if (dim != 0 && n > std::numeric_limits<int64_t>::max() / dim)
      throw Error(what + ": shape " + shape_string(shape) + " overflows the element count");
    n *= dim;
  }
  return n;
}

std::string shape_string(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Tensor::Tensor(DType dtype_, Shape shape_) : dtype(dtype_), shape(std::move(shape_)) {
  bytes.resize(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype));
}

Tensor Tensor::from_f32(std::span<const float> values, Shape shape) {
  Tensor t(DType::F32, std::move(shape));
  if (static_cast<size_t>(t.numel()) != values.size())
    throw Error("Tensor::from_f32: " + std::to_string(values.size()) + " values for shape " +
                shape_string(t.shape));
  std::memcpy(t.bytes.data(), values.data(), values.size_bytes());
  return t;
}

std::vector<float> widen_f32(const TensorView& view, const std::string& what) {
  const auto n = static_cast<size_t>(view.numel());
  std::vector<float> out(n);
  switch (view.dtype) {
    case DType::F32:
      if (n) std::memcpy(out.data(), view.data, n * 4);
      break;
    case DType::F16: {
      const auto* src = static_cast<const uint16_t*>(view.data);
      for (size_t i = 0; i < n; ++i) out[i] = half_to_float(src[i]);
      break;
    }
    case DType::BF16: {
      const auto* src = static_cast<const uint16_t*>(view.data);
      for (size_t i = 0; i < n; ++i) out[i] = bf16_to_float(src[i]);
      break;
    }
    default:
      throw Error(what + ": expected a floating-point tensor (F32, F16, BF16), got " +
                  dtype_name(view.dtype));
  }
  return out;
}

void require_finite(std::span<const float> values, const std::string& what) {
  for (size_t i = 0; i < values.size(); ++i)
    if (!std::isfinite(values[i]))
      throw Error(what + ": non-finite value " + std::to_string(values[i]) + " at index " +
                  std::to_string(i));
}

void require_no_overflow(std::span<const float> result, const std::string& what) {
  for (size_t i = 0; i < result.size(); ++i)
    if (!std::isfinite(result[i]))
      throw Error(what + ": overflow inside: the result is " + std::to_string(result[i]) +
                  " at index " + std::to_string(i) +
                  " although every input is finite (input values too large for fp32 here)");
}

}  // namespace kvq
