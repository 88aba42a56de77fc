// AKVQ-VL TSA/PSA bit allocation as docs/spec.md §6 states it (note A1: the paper's exact rule is
// not confirmed yet; this is the specification's default text).
#include "reference/allocation.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "reference/attention.h"
#include "reference/error.h"
#include "reference/quantize.h"

namespace kvq {

namespace {

void check_params(const AllocationParams& p) {
  if (!valid_bits(p.bits_hi) || !valid_bits(p.bits_lo))
    throw Error("bit allocation: bits_hi (" + std::to_string(p.bits_hi) + ") and bits_lo (" +
                std::to_string(p.bits_lo) + ") must be in {1, 2, 3, 4, 8}");
  if (!(p.tsa_fraction >= 0.0 && p.tsa_fraction <= 1.0) ||
      !(p.psa_mass >= 0.0 && p.psa_mass <= 1.0) ||
      !(p.psa_max_fraction >= 0.0 && p.psa_max_fraction <= 1.0))
    throw Error("bit allocation: tsa_fraction, psa_mass and psa_max_fraction must be in [0, 1]");
}

}  // namespace

AttentionPattern layer_pattern(int64_t layer, int64_t layers, const AllocationParams& params) {
  check_params(params);
  if (layers < 1 || layer < 0 || layer >= layers)
    throw Error("bit allocation: layer " + std::to_string(layer) + " outside [0, " +
                std::to_string(layers) + ")");
  return static_cast<double>(layer) < params.tsa_fraction * static_cast<double>(layers)
             ? AttentionPattern::Tsa
             : AttentionPattern::Psa;
}

std::vector<double> received_attention(std::span<const float> q, std::span<const float> k,
                                       int64_t tokens, int64_t q_heads, int64_t kv_heads,
                                       int64_t head_dim) {
  std::vector<double> mass(static_cast<size_t>(std::max<int64_t>(tokens, 0)), 0.0);
  for (int64_t h = 0; h < q_heads; ++h) {
    const std::vector<double> a =
        causal_attention_f64(q, k, tokens, q_heads, kv_heads, head_dim, h);
    for (int64_t i = 0; i < tokens; ++i)
      for (int64_t j = 0; j <= i; ++j)
        mass[static_cast<size_t>(j)] += a[static_cast<size_t>(i * tokens + j)];
  }
  return mass;
}

std::vector<int32_t> psa_pivots(std::span<const double> received, const AllocationParams& params) {
  check_params(params);
  if (received.empty()) throw Error("psa_pivots: no received attention");
  double total = 0.0;
  for (size_t j = 0; j < received.size(); ++j) {
    if (!std::isfinite(received[j]) || received[j] < 0.0)
      throw Error("psa_pivots: received attention of token " + std::to_string(j) +
                  " is negative or not finite");
    total += received[j];
  }
  std::vector<int32_t> order(received.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return received[static_cast<size_t>(a)] > received[static_cast<size_t>(b)];
  });
  const auto cap =
      std::max<int64_t>(1, static_cast<int64_t>(std::floor(params.psa_max_fraction *
                                                           static_cast<double>(received.size()))));
  std::vector<int32_t> out;
  double mass = 0.0;
  for (int32_t j : order) {
    if (static_cast<int64_t>(out.size()) >= cap || mass >= params.psa_mass * total) break;
    out.push_back(j);
    mass += received[static_cast<size_t>(j)];
  }
  std::sort(out.begin(), out.end());
  return out;
}

BitAllocation allocate_bits(int64_t layer, int64_t layers, std::span<const uint8_t> modality,
                            std::span<const double> received, int64_t tokens,
                            const AllocationParams& params) {
  if (tokens < 1) throw Error("allocate_bits: tokens must be positive");
  if (!modality.empty() && static_cast<int64_t>(modality.size()) != tokens)
    throw Error("allocate_bits: modality has " + std::to_string(modality.size()) + " entries for " +
                std::to_string(tokens) + " tokens");
  BitAllocation out;
  out.pattern = layer_pattern(layer, layers, params);
  std::vector<uint8_t> salient(static_cast<size_t>(tokens), 0);
  if (out.pattern == AttentionPattern::Tsa) {
    for (int64_t t = 0; t < tokens; ++t) {
      const uint8_t m = modality.empty() ? 0 : modality[static_cast<size_t>(t)];
      if (m > 1)
        throw Error("allocate_bits: modality[" + std::to_string(t) + "] = " + std::to_string(m) +
                    " is neither 0 (text) nor 1 (image)");
      salient[static_cast<size_t>(t)] = m == 0;
    }
  } else {
    if (static_cast<int64_t>(received.size()) != tokens)
      throw Error("allocate_bits: PSA layer " + std::to_string(layer) +
                  " needs received attention "
                  "for " +
                  std::to_string(tokens) + " tokens, got " + std::to_string(received.size()));
    for (int32_t j : psa_pivots(received, params)) salient[static_cast<size_t>(j)] = 1;
  }
  out.bits.resize(static_cast<size_t>(tokens));
  double sum = 0.0;
  for (int64_t t = 0; t < tokens; ++t) {
    const bool s = salient[static_cast<size_t>(t)];
    out.bits[static_cast<size_t>(t)] = static_cast<uint8_t>(s ? params.bits_hi : params.bits_lo);
    if (s) out.salient.push_back(static_cast<int32_t>(t));
    sum += out.bits[static_cast<size_t>(t)];
  }
  out.average_bits = sum / static_cast<double>(tokens);
  return out;
}

}  // namespace kvq
