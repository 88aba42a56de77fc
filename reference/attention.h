// Decode attention over a quantized KV cache, docs/spec.md §7 (a tolerance op), and its fp64
// oracle.
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

  // --- Additions by methods.h (all optional; empty keeps the meaning above) ---
  // V's own kept flags when they differ from K's (KIVI: K waits for whole groups); empty = V
  // uses `kept`. Kept rows are in the quantizer's input basis before rotation: pre-RoPE K when
  // k_pre_rope (RoPE is applied after, like every other row), post-RoPE otherwise.
  std::vector<uint8_t> v_kept;
  // Quantized parts over subsets of tokens, used instead of k / v when non-empty: sinks are
  // excluded from quantization groups (docs/spec.md §4) and AKVQ-VL stores two bit widths (§6).
  // Row r of part.q holds token part.tokens[r].
  struct QuantizedRows {
    std::vector<int32_t> tokens;
    Quantized q;
  };
  std::vector<QuantizedRows> k_parts, v_parts;
  // Dense-and-sparse outliers (KVQuant): flat indices into [tokens, heads * head_dim] of the
  // quantized (pre-rotation) basis, ascending, with fp16 values that replace the dequantized
  // value there; the dense part was quantized with these elements set to 0.
  struct SparseOutliers {
    std::vector<int32_t> index;
    std::vector<uint16_t> value;
  };
  SparseOutliers k_outliers, v_outliers;
  // The fp32 method (the unquantized baseline, docs/spec.md §8): when non-empty these rows
  // [tokens, heads * head_dim] (original basis, K post-RoPE) are the cache, exactly.
  std::vector<float> k_f32, v_f32;
};

// Causal attention probabilities of one query head in fp64 (docs/spec.md §4 ground truth, §6
// received attention): q [T, q_heads, d] and k [T, kv_heads, d] post-RoPE;
// A[i, j] = softmax_j<=i(q_i . k_j / sqrt(d)), max-subtracted, 0 above the diagonal.
// Grouped-query: head h reads KV head h / (q_heads / kv_heads). Returns [T, T] row-major.
std::vector<double> causal_attention_f64(std::span<const float> q, std::span<const float> k,
                                         int64_t tokens, int64_t q_heads, int64_t kv_heads,
                                         int64_t head_dim, int64_t head);

// RoPE on consecutive pairs (2i, 2i+1) of each head of x ([heads, d]) at `position`, theta base:
// angle = position * theta^(-2i/d) computed in fp64, cos/sin rounded to fp32, then
// (a, b) -> (a*c - b*s, a*s + b*c) in fp32 without contraction.
void apply_rope(std::span<float> x, int64_t heads, int64_t head_dim, int64_t position,
                float theta);

// The K and V the cache reconstructs, [tokens, heads * head_dim], in the original basis, post-RoPE
// for K (docs/spec.md §7: k_j = RoPE_j(inverse_rotate(dequant(K_j)))).
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
