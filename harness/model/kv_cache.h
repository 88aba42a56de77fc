// The KV-cache policy of the llama2.c runner (docs/spec.md §9): each new token's K/V rows of a
// layer
// are handed to the cache, and attention reads back what the cache reconstructs. The fp32 cache
// stores the rows as they are (the baseline); a quantizing method reconstructs them lossily.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace kvq {

// One token's rows entering one layer's cache. k and v are [H_kv * d]; k is post-RoPE,
// k_pre_rope the same key before RoPE (methods that quantize pre-RoPE keys read it, docs/spec.md
// §8); hidden_in is the residual stream entering the layer ([dim]), for sink detectors.
struct KvAppend {
  int layer = 0;
  int64_t position = 0;
  std::span<const float> k_pre_rope, k, v, hidden_in;
};

// Bits the cache stores for K and V together, over `elements` K and V values (docs/spec.md §3
// "memory per element": bits per element = bits / elements).
struct CacheBits {
  int64_t bits = 0;
  int64_t elements = 0;
};

class KvCache {
 public:
  virtual ~KvCache() = default;
  // Tokens arrive in position order per layer, 0, 1, 2, ...
  virtual void append(const KvAppend& rows) = 0;
  // What attention reads for `layer`: [tokens, H_kv * d] keys (post-RoPE) and values, in the
  // original basis. Valid until the next append to that layer.
  virtual std::span<const float> keys(int layer) const = 0;
  virtual std::span<const float> values(int layer) const = 0;
  // Storage of everything appended so far, all layers.
  virtual CacheBits storage() const = 0;
};

// The unquantized cache: rows stored as given.
class Fp32KvCache final : public KvCache {
 public:
  explicit Fp32KvCache(int layers) : k_(static_cast<size_t>(layers)), v_(k_.size()) {}
  void append(const KvAppend& rows) override {
    auto& k = k_.at(static_cast<size_t>(rows.layer));
    auto& v = v_.at(static_cast<size_t>(rows.layer));
    k.insert(k.end(), rows.k.begin(), rows.k.end());
    v.insert(v.end(), rows.v.begin(), rows.v.end());
  }
  std::span<const float> keys(int layer) const override {
    return k_.at(static_cast<size_t>(layer));
  }
  std::span<const float> values(int layer) const override {
    return v_.at(static_cast<size_t>(layer));
  }
  CacheBits storage() const override {
    CacheBits b;
    for (size_t l = 0; l < k_.size(); ++l)
      b.elements += static_cast<int64_t>(k_[l].size() + v_[l].size());
    b.bits = 32 * b.elements;
    return b;
  }

 private:
  std::vector<std::vector<float>> k_, v_;
};

}  // namespace kvq
