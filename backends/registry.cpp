#include "backends/backend.h"

#include "backends/reference_backend.h"
#include "reference/error.h"
#ifdef KVQ_HAVE_AVX
#include "backends/avx/avx_backend.h"
#endif
#ifdef KVQ_HAVE_CUDA
#include "backends/cuda/cuda_backend.h"
#endif

namespace kvq {

namespace {

std::vector<BackendEntry> build_registry() {
  std::vector<BackendEntry> entries;
  entries.push_back({"ref", true, "scalar C++ reference (docs/spec.md), always available",
                     &make_reference_backend});
#ifdef KVQ_HAVE_AVX
  for (BackendEntry& entry : avx_backend_entries()) entries.push_back(std::move(entry));
#else
  entries.push_back({"avx512", false, "not built (x86-64 only)", nullptr});
  entries.push_back({"avx2", false, "not built (x86-64 only)", nullptr});
#endif
#ifdef KVQ_HAVE_CUDA
  entries.push_back(cuda_backend_entry());
#else
  entries.push_back({"cuda", false, "not built: nvcc was not found at configure time", nullptr});
#endif
  return entries;
}

}  // namespace

const std::vector<BackendEntry>& backend_registry() {
  static const std::vector<BackendEntry> registry = build_registry();
  return registry;
}

std::unique_ptr<Backend> make_backend(const std::string& name) {
  std::string available;
  for (const BackendEntry& entry : backend_registry()) {
    if (entry.name == name) {
      if (!entry.available) throw Error("backend '" + name + "' is not available: " + entry.detail);
      return entry.make();
    }
    if (entry.available) available += (available.empty() ? "" : ", ") + entry.name;
  }
  throw Error("unknown backend '" + name + "' (available: " + available + ")");
}

}  // namespace kvq
