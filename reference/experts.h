// Super Experts, docs/spec.md §5.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace kvq {

// m[e] = max |down_proj output| over the tokens routed to expert e (one layer), with the token
// and channel where it first occurs (lowest token, then lowest slot). Recordings carry per
// (token, slot) the routed expert id, that expert's output max-abs and, optionally, its argmax
// channel ([tokens, top_k] each). Experts never routed to have max_abs = 0, token = -1.
struct ExpertStat {
  float max_abs = 0.0f;
  int32_t token = -1;
  int32_t channel = -1;  // -1 when the recording has no argmax
};
std::vector<ExpertStat> expert_statistics(std::span<const int32_t> ids,
                                          std::span<const float> down_absmax,
                                          std::span<const int32_t> down_argmax,  // may be empty
                                          int64_t tokens, int64_t top_k, int64_t num_experts);

// Super Expert selection over all layers' statistics (stats[l][e], docs/spec.md §5): layers
// l < round(include_layers * L) (round half to even, as Python's round()) are considered; e is
// a Super Expert of l if m > P99.5 and m > floor(max_all / 10) (strict), P99.5 the 99.5th
// percentile of every considered m (never-routed experts included, m = 0) with numpy's default
// linear interpolation, max_all their maximum. Sorted by m descending (ties: lower layer, then
// lower expert), ranked from 1.
struct SuperExpertParams {
  double include_layers = 0.75;  // docs/spec.md §5 default
  double percentile = 99.5;      // docs/spec.md §5
  double max_divisor = 10.0;     // docs/spec.md §5: floor(max_all / 10)
};
struct SuperExpert {
  int32_t rank = 0;
  int32_t layer = 0, expert = 0;
  float max_abs = 0.0f;
  int32_t token = -1, channel = -1;
};
std::vector<SuperExpert> select_super_experts(const std::vector<std::vector<ExpertStat>>& stats,
                                              const SuperExpertParams& params = {});

// numpy.percentile(values, q) with the default 'linear' method (q in [0, 100]), in fp64.
double percentile_linear(std::span<const double> values, double q);
// round(fraction * layers) half to even: the count of considered layers.
int64_t included_layer_count(int64_t layers, double fraction);

}  // namespace kvq
