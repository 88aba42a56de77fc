// AKVQ-VL attention-aware bit allocation (docs/spec.md §6) against uniform quantization at EQUAL
// average bits, on a modality-tagged recording: attention-output relative error of both, per
// layer and overall, against the fp64 attention of the unquantized K and V. Scenario op "vlm".
//
// Both quantize K (post-RoPE, docs/spec.md §8) and V after a per-head WHT, per token with groups of
// G channels. Uniform: every token at `bits`. AKVQ-VL (budgeted): docs/spec.md §6 chooses the
// salient tokens (text tokens in TSA layers, pivots in PSA layers); they are promoted to bits_hi in
// descending order of received attention, each promotion paid for by demoting (bits_hi - bits) /
// (bits - bits_pay) of the least-attended non-salient tokens to bits_pay, for as long as
// non-salient tokens remain; so the code bits of every layer sum to exactly bits x T (equal
// average bits, enforced per layer; with token-axis groups the scales and zeros are equal too,
// and only AKVQ-VL's bit-width map, 8 bits per token, differs). docs/spec.md §6's own allocation
// (salient at bits_hi, all others at bits, average above `bits`) is reported beside, as "spec",
// against "above": uniform at the narrowest width that spends at least spec's average code bits
// (fewer bits and a lower error is the paper's claim in its fair form).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "harness/recording/recording_layers.h"
#include "harness/studies/studies.h"
#include "reference/allocation.h"

namespace kvq {

struct VlmParams {
  int bits = 2;          // uniform width and the average AKVQ-VL must meet
  int bits_hi = 8;       // salient tokens (docs/spec.md §6 b_hi)
  int bits_pay = 1;      // demoted tokens (pay for the salient ones); the op: bits - 1
  int64_t group = 128;   // G, token axis (docs/spec.md §3)
  AllocationParams allocation;  // TSA/PSA split and pivot rule (docs/spec.md §6 defaults)
};

// Per-token widths with sum == bits * T exactly (see above); `salient` ascending, `received`
// per-token attention mass. Promotion order: received descending, ties lower index; demotion
// order: received ascending, ties lower index. Throws kvq::Error on bits outside {1, 2, 3, 4, 8}
// or not bits_pay < bits < bits_hi.
struct BudgetedAllocation {
  std::vector<uint8_t> bits;  // [T]
  int64_t promoted = 0, demoted = 0;
};
BudgetedAllocation budgeted_allocation(std::span<const int32_t> salient,
                                       std::span<const double> received, const VlmParams& params);

// x [T, H, d] -> WHT per head -> per-token quantization at bits[t] (tokens of one width form
// one block, groups of G channels) -> dequantize -> inverse WHT: what attention reads.
// Also returns the stored bits (codes + fp16 scales and zeros) in `storage_bits`.
std::vector<float> mixed_reconstruct(std::span<const float> x, const KvShape& shape,
                                     std::span<const uint8_t> bits, int64_t group,
                                     int64_t* storage_bits = nullptr);

// Relative Frobenius error of the causal attention output over every query and query head,
// fp64 (reference/attention causal_attention_f64): sums of squares returned separately so
// layers can be pooled. q [T, Hq, d]; k, v and their reconstructions [T, Hkv, d].
struct ErrorSums {
  double err2 = 0.0, ref2 = 0.0;
  double relative() const;
};
ErrorSums attention_output_error(std::span<const float> q, std::span<const float> k,
                                 std::span<const float> v, std::span<const float> k_hat,
                                 std::span<const float> v_hat, const KvShape& shape,
                                 int64_t q_heads);

struct VlmLayer {
  int64_t layer = 0;
  AttentionPattern pattern = AttentionPattern::Tsa;
  int64_t salient = 0, promoted = 0, demoted = 0;
  ErrorSums akvq, uniform, spec, above;
  double akvq_avg_bits = 0.0, uniform_avg_bits = 0.0, spec_avg_bits = 0.0;  // code bits
  // K + V bits, with the bit-width map for akvq and spec
  int64_t akvq_storage = 0, uniform_storage = 0, spec_storage = 0, above_storage = 0;
};
struct VlmStudy {
  std::vector<VlmLayer> layers;
  ErrorSums akvq, uniform, spec, above;  // pooled over layers
  double akvq_avg_bits = 0.0, uniform_avg_bits = 0.0, spec_avg_bits = 0.0;
  int above_bits = 8;  // the smallest width in {1, 2, 3, 4, 8} >= spec_avg_bits
  int64_t elements = 0;  // K + V elements over layers
  int64_t image_tokens = 0, tokens = 0;
};
VlmStudy run_vlm_study(const RecordingLayers& recording, const VlmParams& params);

// The scenario op: input "synthetic" (synthesized here with the `image_tokens` and
// `text_attention` keys, harness/recording/synth.h) or a
// recording (harness/recording/case_recording.h); keys bits, bits_hi, bits_pay (default bits - 1),
// group. Measurements akvq_attention_rel_error, uniform_attention_rel_error,
// spec_attention_rel_error, avg_bits (= akvq's = uniform's), uniform_avg_bits, spec_avg_bits,
// akvq_bits_per_element, uniform_bits_per_element, spec_bits_per_element, akvq_beats_uniform (1/0),
// uniform_above_bits, uniform_above_attention_rel_error, uniform_above_bits_per_element,
// spec_beats_uniform_above (1/0) and per layer
// akvq/uniform/spec_attention_rel_error_L<l> and promoted_L<l>.
StudyOutcome vlm_study_case(const ScenarioCase& c);

}  // namespace kvq
