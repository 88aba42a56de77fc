// Super Experts, docs/spec.md §5: per-expert down_proj max-abs statistics and the selection rule of
// ZunhaiSu/Super-Experts-Profilling (`_identify_super_experts`).
#include "reference/experts.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "reference/error.h"
#include "reference/tensor.h"

namespace kvq {

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
  std::vector<ExpertStat> out(static_cast<size_t>(num_experts));
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t s = 0; s < top_k; ++s) {
      const auto i = static_cast<size_t>(t * top_k + s);
      const int32_t e = ids[i];
      if (e < 0 || e >= num_experts)
        throw Error("expert_statistics: experts.ids[" + std::to_string(t) + ", " +
                    std::to_string(s) + "] = " + std::to_string(e) + " is outside [0, " +
                    std::to_string(num_experts) + ")");
      if (down_absmax[i] < 0.0f)
        throw Error("expert_statistics: experts.down_absmax[" + std::to_string(t) + ", " +
                    std::to_string(s) + "] is negative");
      if (!down_argmax.empty() && down_argmax[i] < 0)
        throw Error("expert_statistics: experts.down_argmax[" + std::to_string(t) + ", " +
                    std::to_string(s) + "] is negative");
      ExpertStat& stat = out[static_cast<size_t>(e)];
      // Strict > in (token, slot) order keeps the first occurrence on ties; the first routed
      // token sets the statistic even when its max is 0.
      if (stat.token < 0 || down_absmax[i] > stat.max_abs) {
        stat.max_abs = down_absmax[i];
        stat.token = static_cast<int32_t>(t);
        stat.channel = down_argmax.empty() ? -1 : down_argmax[i];
      }
    }
  return out;
}

double percentile_linear(std::span<const double> values, double q) {
  if (values.empty()) throw Error("percentile: no values");
  if (!(q >= 0.0 && q <= 100.0)) throw Error("percentile: q must be in [0, 100]");
  for (size_t i = 0; i < values.size(); ++i)
    if (!std::isfinite(values[i]))
      throw Error("percentile: value " + std::to_string(i) + " is not finite");
  std::vector<double> v(values.begin(), values.end());
  std::sort(v.begin(), v.end());
  // numpy 'linear': virtual index (n - 1) * q/100, then _lerp(a, b, gamma), which for
  // gamma >= 0.5 computes b - (b - a) * (1 - gamma) for symmetry.
  const double quantile = q / 100.0;
  const double virtual_index = static_cast<double>(v.size() - 1) * quantile;
  const double previous = std::floor(virtual_index);
  const auto lo = static_cast<size_t>(previous);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  const double gamma = virtual_index - previous;
  const double a = v[lo], b = v[hi];
  const double diff = b - a;
  return gamma >= 0.5 ? b - diff * (1.0 - gamma) : a + diff * gamma;
}

int64_t included_layer_count(int64_t layers, double fraction) {
  if (layers < 0 || !(fraction >= 0.0 && fraction <= 1.0))
    throw Error("include_layers: fraction must be in [0, 1] and layers >= 0");
  // Python's round(): half to even (std::nearbyint in the default rounding mode).
  return static_cast<int64_t>(std::nearbyint(fraction * static_cast<double>(layers)));
}

std::vector<SuperExpert> select_super_experts(const std::vector<std::vector<ExpertStat>>& stats,
                                              const SuperExpertParams& params) {
  if (!(params.max_divisor > 0.0) || !std::isfinite(params.max_divisor))
    throw Error("select_super_experts: max_divisor must be positive");
  const int64_t considered =
      included_layer_count(static_cast<int64_t>(stats.size()), params.include_layers);
  std::vector<double> m;
  for (int64_t l = 0; l < considered; ++l)
    for (size_t e = 0; e < stats[static_cast<size_t>(l)].size(); ++e) {
      const float v = stats[static_cast<size_t>(l)][e].max_abs;
      if (!std::isfinite(v) || v < 0.0f)
        throw Error("select_super_experts: layer " + std::to_string(l) + " expert " +
                    std::to_string(e) + " has max_abs that is negative or not finite");
      m.push_back(static_cast<double>(v));
    }
  std::vector<SuperExpert> out;
  if (m.empty()) return out;
  const double p = percentile_linear(m, params.percentile);
  const double floor_max = std::floor(*std::max_element(m.begin(), m.end()) / params.max_divisor);
  for (int64_t l = 0; l < considered; ++l)
    for (size_t e = 0; e < stats[static_cast<size_t>(l)].size(); ++e) {
      const ExpertStat& s = stats[static_cast<size_t>(l)][e];
      const auto v = static_cast<double>(s.max_abs);
      if (v > p && v > floor_max)
        out.push_back(
            {0, static_cast<int32_t>(l), static_cast<int32_t>(e), s.max_abs, s.token, s.channel});
    }
  std::sort(out.begin(), out.end(), [](const SuperExpert& a, const SuperExpert& b) {
    if (a.max_abs != b.max_abs) return a.max_abs > b.max_abs;
    return a.layer != b.layer ? a.layer < b.layer : a.expert < b.expert;
  });
  for (size_t i = 0; i < out.size(); ++i) out[i].rank = static_cast<int32_t>(i + 1);
  return out;
}

}  // namespace kvq
