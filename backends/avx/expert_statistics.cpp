// expert_statistics for the AVX backends, twin of reference/experts.cpp (SPEC.md §5).
#include "backends/avx/expert_statistics.h"

#include <algorithm>
#include <string>

#include "reference/error.h"
#include "reference/tensor.h"

namespace kvq::avx {

namespace {

constexpr int64_t kChunkTokens = 4096;  // fixed chunks: the merge order never depends on threads

// The reference's message for the first invalid (token, slot); checks in its order.
[[noreturn]] void throw_bad_entry(int64_t i, int64_t top_k, int64_t num_experts,
                                  std::span<const int32_t> ids, std::span<const int32_t> argmax) {
  const std::string at = "[" + std::to_string(i / top_k) + ", " + std::to_string(i % top_k) + "]";
  const int32_t e = ids[static_cast<size_t>(i)];
  if (e < 0 || e >= num_experts)
    throw Error("expert_statistics: experts.ids" + at + " = " + std::to_string(e) +
                " is outside [0, " + std::to_string(num_experts) + ")");
  if (argmax.empty() || argmax[static_cast<size_t>(i)] >= 0)
    throw Error("expert_statistics: experts.down_absmax" + at + " is negative");
  throw Error("expert_statistics: experts.down_argmax" + at + " is negative");
}

}  // namespace

std::vector<ExpertStat> expert_statistics(std::span<const int32_t> ids,
                                          std::span<const float> down_absmax,
                                          std::span<const int32_t> down_argmax, int64_t tokens,
                                          int64_t top_k, int64_t num_experts) {
  if (tokens < 0 || top_k < 1 || num_experts < 1)
    throw Error("expert_statistics: tokens (" + std::to_string(tokens) + ") must be >= 0, top_k (" +
                std::to_string(top_k) + ") and experts (" + std::to_string(num_experts) +
                ") positive");
  const int64_t n = shape_numel({tokens, top_k}, "expert_statistics ids");
  if (static_cast<int64_t>(ids.size()) != n || static_cast<int64_t>(down_absmax.size()) != n)
    throw Error("expert_statistics: experts.ids has " + std::to_string(ids.size()) +
                " values and experts.down_absmax " + std::to_string(down_absmax.size()) +
                ", [tokens, top_k] needs " + std::to_string(n));
  if (!down_argmax.empty() && static_cast<int64_t>(down_argmax.size()) != n)
    throw Error("expert_statistics: experts.down_argmax has " + std::to_string(down_argmax.size()) +
                " values, [tokens, top_k] needs " + std::to_string(n));
  require_finite(down_absmax, "experts.down_absmax");

  const int64_t chunks = (tokens + kChunkTokens - 1) / kChunkTokens;
  const auto experts = static_cast<size_t>(num_experts);
  std::vector<ExpertStat> partial(static_cast<size_t>(chunks) * experts);
  int64_t first_bad = n;
  const bool has_argmax = !down_argmax.empty();
#pragma omp parallel for schedule(static) reduction(min : first_bad) if (n > 65536)
  for (int64_t c = 0; c < chunks; ++c) {
    ExpertStat* local = partial.data() + static_cast<size_t>(c) * experts;
    const int64_t end = std::min(tokens, (c + 1) * kChunkTokens) * top_k;
    for (int64_t i = c * kChunkTokens * top_k; i < end; ++i) {
      const int32_t e = ids[static_cast<size_t>(i)];
      const float m = down_absmax[static_cast<size_t>(i)];
      const int32_t ch = has_argmax ? down_argmax[static_cast<size_t>(i)] : -1;
      if (e < 0 || e >= num_experts || m < 0.0f || (has_argmax && ch < 0)) {
        first_bad = std::min(first_bad, i);
        break;
      }
      // Strict > in (token, slot) order keeps the first occurrence (reference/experts.cpp).
      ExpertStat& stat = local[e];
      if (stat.token < 0 || m > stat.max_abs) stat = {m, static_cast<int32_t>(i / top_k), ch};
    }
  }
  if (first_bad < n) throw_bad_entry(first_bad, top_k, num_experts, ids, down_argmax);
  // Merging chunk results in token order with the same rule equals one sequential pass.
  std::vector<ExpertStat> out(experts);
  for (int64_t c = 0; c < chunks; ++c)
    for (size_t e = 0; e < experts; ++e) {
      const ExpertStat& p = partial[static_cast<size_t>(c) * experts + e];
      if (p.token >= 0 && (out[e].token < 0 || p.max_abs > out[e].max_abs)) out[e] = p;
    }
  return out;
}

}  // namespace kvq::avx
