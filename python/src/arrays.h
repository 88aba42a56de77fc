// numpy <-> kvq spans for the bindings. Inputs must already have the dtype an op reads (float32,
// or float16 where the op widens it): a float64 array is an error, not a silent rounding, since
// kvq's ops are defined bit for bit on their fp32 inputs (docs/spec.md §0). Non-contiguous inputs
// are copied to C order; outputs are new arrays that own the result vector (no extra copy).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "reference/error.h"
#include "reference/rotation.h"
#include "reference/tensor.h"

namespace kvq::py_bind {

namespace py = pybind11;

// A C-contiguous view of `obj` with element type T, or kvq::Error naming `what` and the dtype
// found. The array is kept alive by the returned object.
template <class T>
py::array_t<T, py::array::c_style> input(const py::handle& obj, const std::string& what) {
  py::array a = py::array::ensure(obj);
  if (!a) throw Error(what + ": expected a numpy array or a CPU tensor");
  if (!a.dtype().is(py::dtype::of<T>()))
    throw Error(what + ": dtype " + std::string(py::str(a.dtype())) + ", expected " +
                std::string(py::str(py::dtype::of<T>())));
  return py::array_t<T, py::array::c_style>::ensure(a);
}

template <class T>
std::span<const T> span_of(const py::array_t<T, py::array::c_style>& a) {
  return {a.data(), static_cast<size_t>(a.size())};
}

inline Shape shape_of(const py::array& a) {
  return Shape(a.shape(), a.shape() + a.ndim());
}

// [T, H, d] of a 3-D array, or kvq::Error naming `what`.
inline KvShape kv_shape(const py::array& a, const std::string& what) {
  if (a.ndim() != 3)
    throw Error(what + ": shape " + shape_string(shape_of(a)) + ", expected [T, H, d]");
  return {a.shape(0), a.shape(1), a.shape(2)};
}

// A new numpy array owning `values` (moved), with `shape`; Out lets uint16 fp16 bits come back
// as numpy float16.
template <class Out = void, class T>
py::array output(std::vector<T>&& values, const Shape& shape) {
  auto* owner = new std::vector<T>(std::move(values));
  py::capsule free(owner, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  std::vector<py::ssize_t> dims(shape.begin(), shape.end());
  if constexpr (std::is_void_v<Out>) {
    return py::array_t<T>(dims, owner->data(), free);
  } else {
    // Explicit C strides: pybind11 derives none from a dtype made from a numpy name.
    std::vector<py::ssize_t> strides(dims.size(), static_cast<py::ssize_t>(sizeof(T)));
    for (size_t i = dims.size(); i-- > 1;) strides[i - 1] = strides[i] * dims[i];
    return py::array(py::dtype(Out::name), dims, strides, owner->data(), free);
  }
}
struct Float16 {
  static constexpr const char* name = "float16";
};

// The bits of a float16 (or uint16) array as uint16 values.
inline std::vector<uint16_t> half_bits(const py::handle& obj, const std::string& what) {
  py::array a = py::array::ensure(obj);
  if (!a) throw Error(what + ": expected a numpy array");
  const std::string kind = py::str(a.dtype());
  if (kind != "float16" && kind != "uint16")
    throw Error(what + ": dtype " + kind + ", expected float16");
  a = py::array::ensure(a, py::array::c_style);
  const auto* p = static_cast<const uint16_t*>(a.data());
  return {p, p + a.size()};
}

template <class T>
std::vector<T> vector_of(const py::handle& obj, const std::string& what) {
  if (obj.is_none()) return {};
  // A list of ints is converted exactly (calibration results come back as lists).
  if (!py::isinstance<py::array>(obj)) return obj.cast<std::vector<T>>();
  const auto a = input<T>(obj, what);
  return {a.data(), a.data() + a.size()};
}

}  // namespace kvq::py_bind
