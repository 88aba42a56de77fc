// kvq._kvq: the C++ library as a Python extension module (the `kvq` package wraps it for numpy
// arrays and torch tensors). kvq::Error becomes kvq.Error (a ValueError) with the same message.
#include <pybind11/pybind11.h>

#include "python/src/bindings.h"
#include "reference/error.h"

PYBIND11_MODULE(_kvq, m) {
  m.doc() = "kvq's reference, backends and methods on numpy arrays (see the kvq package)";
  pybind11::register_exception<kvq::Error>(m, "Error", PyExc_ValueError);
  kvq::py_bind::bind_ops(m);
  kvq::py_bind::bind_methods(m);
  kvq::py_bind::bind_store(m);
  kvq::py_bind::bind_cuda(m);
}
