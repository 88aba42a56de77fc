// The parts of the `kvq._kvq` extension module, one file each.
#pragma once

#include <pybind11/pybind11.h>

#include <string>

#include "reference/quantize.h"

namespace kvq::py_bind {

void bind_ops(pybind11::module_& m);      // bind_ops.cpp: backends and their ops
void bind_methods(pybind11::module_& m);  // bind_methods.cpp: docs/spec.md §8 methods
void bind_store(pybind11::module_& m);    // bind_store.cpp: rows of the results store
void bind_cuda(pybind11::module_& m);     // bind_cuda.cpp: CUDA tensors through DLPack

ZeroPoint parse_zero_point(const std::string& s);

}  // namespace kvq::py_bind
