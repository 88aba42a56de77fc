// Seeded synthetic op inputs for scenario cases: deterministic on every platform (splitmix64 and
// fp64 Box-Muller, never std::normal_distribution, whose output is implementation-defined).
#pragma once

#include <cstdint>
#include <vector>

namespace kvq {

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next();
  double uniform();  // [0, 1)
  double normal();   // standard normal, fp64 Box-Muller
 private:
  uint64_t state_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

// [tokens, heads * head_dim] standard normal values; in each head, `outlier_channels` channels
// (the same ones for every token) are multiplied by `outlier_scale`, as pre-RoPE keys look
// (docs/spec.md §2: outlier channels 10-100x the typical magnitude).
std::vector<float> kv_with_outliers(int64_t tokens, int64_t heads, int64_t head_dim, uint64_t seed,
                                    int64_t outlier_channels, double outlier_scale);

}  // namespace kvq
