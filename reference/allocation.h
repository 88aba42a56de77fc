// AKVQ-VL attention-aware bit allocation, docs/spec.md §6 (note A1 open: this implements
// docs/spec.md's default text, to be replaced by the paper's rule once confirmed).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace kvq {

enum class AttentionPattern : uint8_t {
  Tsa,  // text-salient attention (early layers): text tokens are salient
  Psa,  // pivot-salient attention (later layers): a few pivot tokens draw most attention
};

struct AllocationParams {
  double tsa_fraction = 0.5;       // docs/spec.md §6: TSA for l < L * 0.5
  double psa_mass = 0.5;           // docs/spec.md §6: pivots hold 50% of received attention mass...
  double psa_max_fraction = 0.01;  // ...but are at most 1% of tokens
  int bits_hi = 8;                 // docs/spec.md §6 default b_hi
  int bits_lo = 2;                 // docs/spec.md §6 default b_lo
};

// TSA when layer < tsa_fraction * layers (compared in fp64), PSA otherwise.
AttentionPattern layer_pattern(int64_t layer, int64_t layers, const AllocationParams& params = {});

// Received attention mass per key token: sum over query heads and causal queries i >= j of
// A[i, j], recomputed in fp64 from post-RoPE q [T, Hq, d] and k [T, Hkv, d] (heads ascending,
// queries ascending).
std::vector<double> received_attention(std::span<const float> q, std::span<const float> k,
                                       int64_t tokens, int64_t q_heads, int64_t kv_heads,
                                       int64_t head_dim);

// PSA pivots: tokens sorted by received mass descending (ties: lower index), the shortest prefix
// whose mass reaches psa_mass * total, capped at max(1, floor(psa_max_fraction * T)) tokens;
// returned ascending.
std::vector<int32_t> psa_pivots(std::span<const double> received,
                                const AllocationParams& params = {});

struct BitAllocation {
  AttentionPattern pattern = AttentionPattern::Tsa;
  std::vector<uint8_t> bits;     // [tokens]: bits_hi for salient tokens, bits_lo otherwise
  std::vector<int32_t> salient;  // ascending
  double average_bits = 0.0;     // mean of `bits` over tokens
};
// modality: [tokens] 0 text, 1 image; empty = all text (then every TSA-layer token is salient).
// received: per-token attention mass (needed for PSA layers only; may be empty for TSA).
BitAllocation allocate_bits(int64_t layer, int64_t layers, std::span<const uint8_t> modality,
                            std::span<const double> received, int64_t tokens,
                            const AllocationParams& params = {});

}  // namespace kvq
