// Plain tensor types shared by every component: a non-owning view (pointer, shape, dtype;
// contiguous row-major) and an owning tensor. Ops widen inputs to fp32 exactly (docs/spec.md §0).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace kvq {

enum class DType : uint8_t { F32, F16, BF16, I32, U8 };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);  // "F32", "F16", "BF16", "I32", "U8" (safetensors spelling)

using Shape = std::vector<int64_t>;

// Number of elements; throws kvq::Error naming `what` when a dimension is negative or the
// product overflows int64.
int64_t shape_numel(const Shape& shape, const std::string& what = "tensor");
std::string shape_string(const Shape& shape);  // "[4, 8, 128]"

struct TensorView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  Shape shape;

  int64_t numel() const { return shape_numel(shape); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
};

struct Tensor {
  DType dtype = DType::F32;
  Shape shape;
  std::vector<std::byte> bytes;

  Tensor() = default;
  Tensor(DType dtype, Shape shape);  // zero-filled
  static Tensor from_f32(std::span<const float> values, Shape shape);
  TensorView view() const { return {bytes.data(), dtype, shape}; }
  int64_t numel() const { return shape_numel(shape); }
  template <class T> T* data() { return reinterpret_cast<T*>(bytes.data()); }
  template <class T> const T* data() const { return reinterpret_cast<const T*>(bytes.data()); }
};

// Exact widening of an F32/F16/BF16 view to fp32; other dtypes are an error naming `what`.
std::vector<float> widen_f32(const TensorView& view, const std::string& what);

// docs/spec.md §0: a non-finite input is an error naming the tensor and the first bad index.
void require_finite(std::span<const float> values, const std::string& what);
// The result of arithmetic on finite inputs: an infinite value is an overflow inside `what` (the
// inputs are too large for fp32 there), which the error says rather than "non-finite value".
void require_no_overflow(std::span<const float> result, const std::string& what);

}  // namespace kvq
