// CUDA tensors for the cuda backend (placeholder until the DLPack path below is written).
#include "python/src/arrays.h"
#include "python/src/bindings.h"

namespace kvq::py_bind {

void bind_cuda(py::module_& m) {
#ifdef KVQ_HAVE_CUDA
  m.attr("cuda_built") = true;
#else
  m.attr("cuda_built") = false;
#endif
}

}  // namespace kvq::py_bind
