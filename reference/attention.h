// Decode attention over a quantized KV cache, SPEC.md §7 (a tolerance op), and its fp64 oracle.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "reference/quantize.h"
#include "reference/rotation.h"

namespace kvq {

enum class KeyRotation : uint8_t {
  None,             // codes hold K itself
  GroupedHadamard,  // codes hold rotate_k(K) (grouped FWHT + reorder, RotationParams)
  PerHeadHadamard,  // codes hold fwht(K_head, d) per head (AKVQ-VL / plain "hadamard")
};

// One layer's decode cache as a method stores it. Tokens whose `kept` flag is 1 are read from
// the fp16 rows (in the original, unrotated basis); their codes are ignored.
struct DecodeCache {
  KvShape shape;                       // cached tokens, KV heads, head_dim
  bool k_pre_rope = false;             // true: RoPE_j is applied after dequantization (§7)
  float rope_theta = 10000.0f;
  KeyRotation k_rotation = KeyRotation::None;
  RotationParams k_rotation_params;    // for GroupedHadamard
  bool v_per_head_hadamard = false;
  Quantized k, v;                      // [tokens, heads * head_dim]
  std::vector<uint8_t> kept;           // [tokens], empty = none kept
  std::vector<uint16_t> k_fp16, v_fp16;  // [tokens, heads * head_dim], fp16 bits (kept rows)
};

// RoPE on consecutive pairs (2i, 2i+1) of each head of x ([heads, d]) at `position`, theta base:
// angle = position * theta^(-2i/d) computed in fp64, cos/sin rounded to fp32, then
// (a, b) -> (a*c - b*s, a*s + b*c) in fp32 without contraction.
void apply_rope(std::span<float> x, int64_t heads, int64_t head_dim, int64_t position,
                float theta);

// The K and V the cache reconstructs, [tokens, heads * head_dim], in the original basis, post-RoPE
// for K (SPEC.md §7: k_j = RoPE_j(inverse_rotate(dequant(K_j)))).
std::vector<float> reconstruct_keys(const DecodeCache& cache);
std::vector<float> reconstruct_values(const DecodeCache& cache);

// q: [q_heads, head_dim] post-RoPE query of the newest position; q_heads a multiple of the KV
// heads (grouped-query attention: query head h reads KV head h / (q_heads / kv_heads)).
// Returns o: [q_heads, head_dim]. fp32 arithmetic, sums in token order.
std::vector<float> attention_decode(std::span<const float> q, int64_t q_heads,
                                    const DecodeCache& cache);
// Same computation with fp64 accumulation over the same reconstructed K and V: the oracle.
std::vector<double> attention_decode_oracle(std::span<const float> q, int64_t q_heads,
                                            const DecodeCache& cache);

}  // namespace kvq
