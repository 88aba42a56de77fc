// The fused append path of scenarios/perf.toml (fp16 [T, 8, 128], grouped FWHT n = 512 with a
// permutation, 2 bits, G = 128, clip 0.8) called straight through the AVX kernel table, without
// the backend's allocation and checks: for instruction counts (icount) and best-of-N timings.
//   usage: rotate_quantize_driver avx512|avx2 TOKENS REPS [mark]
// mark: raise(SIGSTOP) before and after the timed calls, the region icount counts. Prints the
// best wall and CPU time per call and a hash of codes, scales and zeros (equal hashes: equal
// outputs, e.g. before and after a kernel change).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <vector>

#include "backends/avx/avx_backend.h"
#include "reference/half.h"

namespace {

double seconds(clockid_t clock) {
  timespec t;
  clock_gettime(clock, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

uint64_t fnv1a(uint64_t h, const void* p, size_t n) {
  for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<const uint8_t*>(p)[i]) * 1099511628211ull;
  return h;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: rotate_quantize_driver avx512|avx2 TOKENS REPS [mark]\n");
    return 2;
  }
  const kvq::avx::Kernels* k = kvq::avx_kernels_for(argv[1]);
  if (!k) {
    std::fprintf(stderr, "rotate_quantize_driver: this CPU cannot run %s\n", argv[1]);
    return 2;
  }
  const int64_t tokens = std::atoll(argv[2]), cols = 1024;
  const int reps = std::max(1, std::atoi(argv[3]));
  const bool mark = argc > 4 && std::strcmp(argv[4], "mark") == 0;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> x(static_cast<size_t>(tokens * cols));
  for (size_t i = 0; i < x.size(); ++i)
    x[i] = kvq::float_to_half(normal(rng) * static_cast<float>(1 + i % 7));
  std::vector<int32_t> perm(cols);
  for (int32_t i = 0; i < cols; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  kvq::avx::RowRotation rot;
  rot.n = 512;
  rot.scale = 1.0f / std::sqrt(512.0f);
  rot.perm = perm.data();
  kvq::avx::QuantSpec spec;
  spec.bits = 2;
  spec.clip = 0.8f;
  spec.rows = tokens;
  spec.cols = cols;
  spec.group = 128;
  spec.groups_per_line = cols / 128;
  spec.line_bytes = cols * 2 / 8;
  spec.full_bytes = 128 * 2 / 8;
  std::vector<uint8_t> codes(static_cast<size_t>(tokens * spec.line_bytes));
  std::vector<uint16_t> scale(static_cast<size_t>(tokens * 8)), zero(scale.size());
  kvq::avx::QuantOut out;
  out.codes = codes.data();
  out.scale = scale.data();
  out.zero = zero.data();
  k->rotate_quantize(x.data(), kvq::avx::Src::F16, rot, spec, out);  // warm up
  if (mark) raise(SIGSTOP);
  double wall = 1e30, cpu = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double w0 = seconds(CLOCK_MONOTONIC), c0 = seconds(CLOCK_PROCESS_CPUTIME_ID);
    k->rotate_quantize(x.data(), kvq::avx::Src::F16, rot, spec, out);
    wall = std::min(wall, seconds(CLOCK_MONOTONIC) - w0);
    cpu = std::min(cpu, seconds(CLOCK_PROCESS_CPUTIME_ID) - c0);
  }
  if (mark) raise(SIGSTOP);
  uint64_t h = 1469598103934665603ull;
  h = fnv1a(h, codes.data(), codes.size());
  h = fnv1a(h, scale.data(), scale.size() * 2);
  h = fnv1a(h, zero.data(), zero.size() * 2);
  const double elements = static_cast<double>(tokens * cols);
  std::printf("%s T=%lld threads=%d: best wall %.3f ms (%.3f ns/element), best CPU %.3f ms, "
              "output hash %016llx\n",
              argv[1], static_cast<long long>(tokens), omp_get_max_threads(), wall * 1e3,
              wall * 1e9 / elements, cpu * 1e3, static_cast<unsigned long long>(h));
  return 0;
}
