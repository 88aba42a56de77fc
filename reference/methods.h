// KV-cache compression methods, docs/spec.md §8: each a composition of rotation (§2), quantization
// (§3), sinks (§4) and bit allocation (§6), applied to one layer's recorded K and V (whole-layer
// apply) or token by token (IncrementalCache, for perplexity, §9).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "reference/allocation.h"
#include "reference/attention.h"
#include "reference/quantize.h"
#include "reference/sinks.h"

namespace kvq {

enum class Method : uint8_t { Fp32, Rtn, Kivi, KvQuant, RotateKv, KvSinkKvQuant, AkvqVl };
// "fp32", "rtn", "kivi", "kvquant", "rotatekv", "kvsink+kvquant", "akvq-vl"; unknown names are
// a kvq::Error listing the known ones.
Method parse_method(const std::string& name);
const char* method_name(Method method);
// True for the methods that quantize pre-RoPE K (kvquant, kvsink+kvquant, rotatekv, docs/spec.md
// §8).
bool method_uses_pre_rope_k(Method method);

struct MethodParams {
  Method method = Method::Rtn;
  int bits = 2;         // b (for akvq-vl: b_lo; b_hi is allocation.bits_hi)
  int64_t group = 128;  // G, docs/spec.md §3
  int64_t window = -1;  // R most recent tokens in fp16; -1 = method default (§7:
                        // 128 for kivi, 0 otherwise)
  float clip = -1.0f;   // r of K and V; -1 = method default (§8: rotatekv 0.8 at 2 bits, else 1)
  ZeroPoint zero_point = ZeroPoint::Float;  // docs/spec.md §3 default
  int head_group = 4;                       // rotatekv g, docs/spec.md §2
  double outlier_fraction = 0.01;           // kvquant: top 1% magnitude per quantization group, §8
  int64_t first_tokens = 1;                 // kvquant: PFN N, docs/spec.md §4
  double calibration_fraction = 0.5;        // rotatekv permutation: first half of the tokens, §2
  bool reorder = true;  // rotatekv: false keeps the channel order (identity permutation): the
                        // "FWHT only" ablation of docs/readme-studies.md
  float rope_theta = 10000.0f;
  PivotParams pivot;            // rotatekv sinks
  KvSinkParams kvsink;          // kvsink+kvquant sinks
  AllocationParams allocation;  // akvq-vl
};

// One layer's recorded tensors, fp32 row-major. Which ones a method reads: rtn, kivi and akvq-vl
// read k (post-RoPE); kvquant, kvsink+kvquant and rotatekv read k_pre_rope; all read v; akvq-vl
// PSA layers read q; calibration reads hidden_in (rotatekv pivots, KVSink). Unused spans may be
// empty.
struct LayerTensors {
  KvShape shape;  // [T, H_kv, d]
  int64_t q_heads = 0;
  int64_t hidden_size = 0;
  std::span<const float> k, k_pre_rope, v;  // [T, H_kv, d]
  std::span<const float> hidden_in;         // [T, hidden]
  std::span<const float> q;                 // [T, q_heads, d]
  std::span<const uint8_t> modality;        // [T] 0 text / 1 image, or empty (all text)
};

// Recording-level calibration (whatever the method needs; the rest stays empty).
struct Calibration {
  KvSinkCalibration kvsink;                  // kvsink+kvquant: l*, C*, median
  std::vector<int32_t> kvsink_sinks;         // predicted at l* over the recording (every layer)
  std::vector<std::vector<int32_t>> k_perm;  // rotatekv: per layer channel permutation
  std::vector<std::vector<int32_t>> pivots;  // rotatekv: per layer pivot tokens
  int64_t perm_calibration_tokens = 0;       // rotatekv: tokens 0 .. n-1 calibrated the perm
};
Calibration calibrate(const std::vector<LayerTensors>& layers, const MethodParams& params);

// Bits of the stored layout of one of K or V (docs/spec.md §3 "memory per element"): packed codes
// (with each group's byte padding), fp16 scales, fp16 (or uint8 "int") zeros, kept fp16 rows
// plus an int32 token index each, sparse outliers as fp16 value + int32 flat index, and for
// akvq-vl a uint8 bit width per token (the allocation map). fp32: 32 bits per element.
struct StorageBits {
  int64_t elements = 0;  // T * H_kv * d
  int64_t codes = 0, scales = 0, zeros = 0, kept = 0, outliers = 0, indices = 0, fp32 = 0;
  int64_t total() const { return codes + scales + zeros + kept + outliers + indices + fp32; }
  double per_element() const;
};

struct AppliedTensor {
  std::vector<DecodeCache::QuantizedRows> parts;  // quantized rows, in the rotated basis
  std::vector<int32_t> kept;                      // tokens kept in fp16, ascending
  std::vector<uint16_t> kept_values;              // [kept, C] fp16, quantizer-input basis
  DecodeCache::SparseOutliers outliers;           // kvquant
  std::vector<float> dequant;                     // [T, C] original basis; K post-RoPE
  StorageBits storage;
};
struct AppliedLayer {
  AppliedTensor k, v;
  DecodeCache cache;  // the same data as a decode cache (docs/spec.md §7)
};
// Whole-layer apply (prefill). `layer`/`layers` locate the layer (calibration, AKVQ-VL TSA/PSA).
AppliedLayer apply_method(const LayerTensors& tensors, int64_t layer, int64_t layers,
                          const Calibration& calibration, const MethodParams& params);

// Per-token cache for perplexity (docs/spec.md §9: each new K/V goes through the method before it
// enters the cache). Usage per layer: construct once per sequence, append() every token, read
// keys()/values() for attention. Decisions that need the whole sequence come from `layer_calib`
// (rotatekv permutation, KVSink l*/C*/median); token-level decisions from TokenRows::sink.
//   kivi / kvquant K: per-channel groups; rows stay fp16 until G non-kept tokens (outside the
//     window R) have arrived, then that group is quantized at once. Everything else per token.
//   sink = -1 lets the method decide: kvquant keeps tokens 0..N-1; kvsink+kvquant predicts at
//     l* from this token's hidden_in when layer == l* (other layers: pass the decision made at
//     l*; layers before l* cannot know it yet and quantize); rotatekv keeps a token when one of
//     its |hidden_in| elements enters the running top-k of the layer (online pivot rule);
//     akvq-vl PSA layers store b_lo. sink = 1 keeps the token in fp16 (akvq-vl: b_hi).
// With the same sink decisions, keys()/values() equal apply_method's dequant bit for bit for
// rtn, kivi, rotatekv, akvq-vl, and for kvquant when the non-kept token count is a multiple of G.
struct LayerCalibration {
  std::vector<int32_t> k_perm;  // rotatekv (empty: calibrated on nothing -> identity)
  KvSinkCalibration kvsink;
};
struct TokenRows {
  std::span<const float> k_pre_rope;  // [H_kv * d], pre-RoPE methods
  std::span<const float> k;           // [H_kv * d], post-RoPE methods
  std::span<const float> v;           // [H_kv * d]
  std::span<const float> hidden_in;   // [hidden]: rotatekv online pivots, KVSink at l*
  int64_t position = 0;               // RoPE position of a pre-RoPE key
  uint8_t modality = 0;               // 0 text, 1 image (akvq-vl TSA layers)
  int sink = -1;                      // -1 method decides, 0 no, 1 keep fp16 / salient
};
class IncrementalCache {
 public:
  IncrementalCache(const MethodParams& params, int64_t kv_heads, int64_t head_dim, int64_t layer,
                   int64_t layers, LayerCalibration calibration);
  ~IncrementalCache();
  IncrementalCache(IncrementalCache&&) noexcept;
  IncrementalCache& operator=(IncrementalCache&&) noexcept;

  // Throws kvq::Error on a row of the wrong size, a non-finite value or an fp16 overflow.
  void append(const TokenRows& rows);
  int64_t size() const;
  // Reconstructed K (post-RoPE) and V, [size, H_kv * d], as attention reads them (§7).
  std::span<const float> keys() const;
  std::span<const float> values() const;
  bool kept(int64_t token) const;  // a sink: K and V stored fp16 for good
  StorageBits k_storage() const;
  StorageBits v_storage() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace kvq
