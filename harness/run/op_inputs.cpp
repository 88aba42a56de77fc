#include "harness/run/op_inputs.h"

#include <cmath>
#include <numbers>

namespace kvq {

uint64_t SplitMix64::next() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double SplitMix64::uniform() {
  return static_cast<double>(next() >> 11) * 0x1p-53;
}

double SplitMix64::normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  const double u1 = 1.0 - uniform();  // (0, 1]: log is finite
  const double u2 = uniform();
  const double r = std::sqrt(-2.0 * std::log(u1));
  spare_ = r * std::sin(2.0 * std::numbers::pi * u2);
  has_spare_ = true;
  return r * std::cos(2.0 * std::numbers::pi * u2);
}

std::vector<float> kv_with_outliers(int64_t tokens, int64_t heads, int64_t head_dim, uint64_t seed,
                                    int64_t outlier_channels, double outlier_scale) {
  SplitMix64 rng(seed);
  std::vector<int64_t> outliers;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < outlier_channels && i < head_dim; ++i)
      outliers.push_back(h * head_dim + static_cast<int64_t>(rng.next() % head_dim));
  const int64_t channels = heads * head_dim;
  std::vector<double> scale(static_cast<size_t>(channels), 1.0);
  for (int64_t c : outliers) scale[c] = outlier_scale;
  std::vector<float> x(static_cast<size_t>(tokens * channels));
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t c = 0; c < channels; ++c)
      x[t * channels + c] = static_cast<float>(rng.normal() * scale[c]);
  return x;
}

}  // namespace kvq
