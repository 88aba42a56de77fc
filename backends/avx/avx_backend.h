// The AVX-512 and AVX2 backends (backends/avx/): one Backend per ISA over the kernel table of
// its translation unit, chosen by CPUID at run time. KVQ_MAX_ISA=avx2 caps the choice (the
// avx512 entry is then unavailable, "capped by KVQ_MAX_ISA"), KVQ_MAX_ISA=scalar caps both.
#pragma once

#include <string>
#include <vector>

#include "backends/avx/kernels.h"
#include "backends/backend.h"

namespace kvq {

// "avx512" and "avx2", available where the CPU has the features (detail lists them or what is
// missing) and KVQ_MAX_ISA allows them.
std::vector<BackendEntry> avx_backend_entries();

// The kernel table of an ISA ("avx512" or "avx2") for tests of the kernels' own helpers (fp16
// conversion); nullptr when this CPU cannot run it. Ignores KVQ_MAX_ISA.
const avx::Kernels* avx_kernels_for(const std::string& isa);

}  // namespace kvq
