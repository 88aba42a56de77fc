// Massive activations and attention sinks, docs/spec.md §4.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace kvq {

// token_absmax(h)[t] = max_c |h[t, c]| over one layer's residual stream [tokens, hidden], with
// the channel where it occurs (lowest channel on ties).
struct TokenAbsmax {
  std::vector<float> absmax;    // [tokens]
  std::vector<int32_t> argmax;  // [tokens]
};
TokenAbsmax token_absmax(std::span<const float> hidden, int64_t tokens, int64_t hidden_size);
// token_absmax's shape rule, shared by every backend: tokens and hidden_size positive, `size`
// values; throws kvq::Error naming `what` (the finiteness check is each backend's own pass).
void check_hidden_shape(size_t size, int64_t tokens, int64_t hidden_size, const std::string& what);

// docs/spec.md §4 median: the T values sorted ascending, element floor(T/2). Empty -> kvq::Error.
float median_floor(std::span<const float> values);

// docs/spec.md §4 massive-activation criterion. Token rule (the default): a_t >= tau_abs and
// a_t >= tau_rel * median_t(a_t). Channel rule (kvq's option, as the Massive Activations paper
// measures): some channel c has |h[t,c]| >= tau_abs and |h[t,c]| >= tau_rel * median_t |h[t,c]|,
// the median of that channel over the tokens. A model whose massive token is large only on a few
// channels (gutenberg-llama's BOS: 414-473 on channel 107, 29-57x the median token's max but
// 125-233x its channel's median) is found by the channel rule and missed by the token rule.
enum class MassiveRule : uint8_t { Token, Channel };
struct MassiveParams {
  float tau_abs = 100.0f;  // docs/spec.md §4 default
  float tau_rel = 100.0f;  // docs/spec.md §4 default
  MassiveRule rule = MassiveRule::Token;
};
// "token" / "channel"; anything else is a kvq::Error naming both.
MassiveRule parse_massive_rule(const std::string& name);
const char* massive_rule_name(MassiveRule rule);
struct MassiveToken {
  int32_t token = 0;
  float absmax = 0.0f;
  int32_t channel = 0;  // token rule: argmax channel; channel rule: the largest qualifying
                        // channel (lowest on ties)
};
// The massive tokens of one layer, in token order.
std::vector<MassiveToken> massive_tokens(std::span<const float> hidden, int64_t tokens,
                                         int64_t hidden_size, const MassiveParams& params = {});

// PFN (Preserve-First-N): tokens 0 .. min(N, tokens)-1. docs/spec.md §4 default N = 1.
std::vector<int32_t> pfn_sinks(int64_t tokens, int64_t n = 1);

// Pivot tokens (RotateKV): top-k elements of |hidden| over all (token, channel) pairs, ties by
// lower flat index; their token indices, duplicates collapsed, returned ascending.
struct PivotParams {
  int64_t top_k = 20;                   // docs/spec.md §4 default k
  bool pivot_requires_massive = false;  // docs/spec.md §4: keep only pivots that are also massive
  MassiveParams massive;
};
std::vector<int32_t> pivot_tokens(std::span<const float> hidden, int64_t tokens,
                                  int64_t hidden_size, const PivotParams& params = {});

// Massive-activation sinks: the massive tokens at the detection layer. `layers` holds each
// layer's hidden_in [tokens, hidden]; detection_layer < 0 means docs/spec.md's default, the first
// layer with any massive token. layer = -1 and no tokens when no layer has one.
struct LayerSinks {
  int64_t layer = -1;
  std::vector<int32_t> tokens;
};
LayerSinks massive_activation_sinks(const std::vector<std::span<const float>>& layers,
                                    int64_t tokens, int64_t hidden_size,
                                    const MassiveParams& params = {}, int64_t detection_layer = -1);

// KVSink (docs/spec.md §4, note K1 open). Calibration: l* = first layer with a massive token; C* =
// the channels (at most max_channels) where a massive token's |h[t, c]| itself meets the
// massive criterion (>= tau_abs and >= tau_rel * median_t(a_t)) at l*, ranked by their largest
// such |h| descending (ties: lower channel), so the argmax channel of the strongest massive
// token comes first. `median` is median_t(max_{c in C*} |h_{l*}[t, c]|) on the calibration
// tokens: the reference used by the per-token (incremental) predictor.
struct KvSinkParams {
  float tau_k = 50.0f;    // docs/spec.md §4 default
  int max_channels = 8;   // docs/spec.md §4: |C*| <= 8
  MassiveParams massive;  // finds l* and C*
};
struct KvSinkCalibration {
  int64_t layer = -1;             // l*; -1 when no layer has massive activations
  std::vector<int32_t> channels;  // C*
  float median = 0.0f;            // calibration median of max_{C*}|h|
};
KvSinkCalibration calibrate_kvsink(const std::vector<std::span<const float>>& layers,
                                   int64_t tokens, int64_t hidden_size,
                                   const KvSinkParams& params = {});
// Whole-sequence prediction at l* (hidden = h_{l*} [tokens, hidden]): t is a sink if
// max_{c in C*}|h[t,c]| >= tau_k * median_t(max_{c in C*}|h[t,c]|) over these tokens.
// An uncalibrated KVSink (layer -1) predicts no sinks.
std::vector<int32_t> predict_kvsink(std::span<const float> hidden, int64_t tokens,
                                    int64_t hidden_size, const KvSinkCalibration& calibration,
                                    const KvSinkParams& params = {});
// One token entering l* (row = h_{l*}[t], hidden_size values): compared with the calibration
// median, since a token-by-token runner has no median of the whole sequence (causal choice).
bool predict_kvsink_token(std::span<const float> row, const KvSinkCalibration& calibration,
                          const KvSinkParams& params = {});

// Ground truth (docs/spec.md §4): attention recomputed in fp64 from recorded q [T, Hq, d] and k
// [T, Hkv, d] (post-RoPE) of every layer; score_j for j <= T - tail is the mean over layers
// l >= first_layer, all query heads and queries i >= j + min_distance of A[i, j] * (i + 1).
struct SinkScoreParams {
  int64_t tail = 64;          // j <= T - 64
  int64_t min_distance = 16;  // queries i >= j + 16
  int64_t first_layer = 2;    // layers l >= 2
  double tau_mass = 5.0;      // docs/spec.md §4 default
};
struct SinkScores {
  std::vector<double> score;   // [max(0, T - tail + 1)]
  std::vector<int32_t> sinks;  // j with score_j >= tau_mass, ascending
};
SinkScores sink_ground_truth(const std::vector<std::span<const float>>& q_layers,
                             const std::vector<std::span<const float>>& k_layers, int64_t tokens,
                             int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                             const SinkScoreParams& params = {});
// The same scores from attention matrices given directly: `attention` holds one causal,
// row-stochastic [T, T] matrix (row = query) per (layer >= first_layer, head), all of which
// are averaged. Used by sink_ground_truth and by tests with hand-built matrices.
SinkScores sink_scores_from_attention(const std::vector<std::vector<double>>& attention,
                                      int64_t tokens, const SinkScoreParams& params = {});

}  // namespace kvq
