// Massive activations and attention sinks, SPEC.md §4.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace kvq {

// token_absmax(h)[t] = max_c |h[t, c]| over one layer's residual stream [tokens, hidden], with
// the channel where it occurs (lowest channel on ties).
struct TokenAbsmax {
  std::vector<float> absmax;    // [tokens]
  std::vector<int32_t> argmax;  // [tokens]
};
TokenAbsmax token_absmax(std::span<const float> hidden, int64_t tokens, int64_t hidden_size);

}  // namespace kvq
