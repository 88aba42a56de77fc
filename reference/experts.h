// Super Experts, SPEC.md §5.
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

}  // namespace kvq
