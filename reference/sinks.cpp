// Massive activations and attention sinks, written as docs/spec.md §4 states them. Every decision
// here is integer-valued (max, comparisons), so any backend reproduces it exactly; the ground
// truth scores are fp64 and only ever thresholded.
#include "reference/sinks.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "reference/attention.h"
#include "reference/error.h"
#include "reference/tensor.h"

namespace kvq {

namespace {

// [tokens, hidden_size] with a finite value everywhere.
void check_hidden(std::span<const float> hidden, int64_t tokens, int64_t hidden_size,
                  const std::string& what) {
  check_hidden_shape(hidden.size(), tokens, hidden_size, what);
  require_finite(hidden, what);
}

void check_massive_params(const MassiveParams& p, const std::string& what) {
  if (!std::isfinite(p.tau_abs) || !std::isfinite(p.tau_rel) || p.tau_abs < 0 || p.tau_rel < 0)
    throw Error(what + ": tau_abs and tau_rel must be finite and >= 0");
}

// a_t >= tau_abs and a_t >= tau_rel * median (fp32 product, docs/spec.md §0).
bool is_massive(float a, float median, const MassiveParams& p) {
  return a >= p.tau_abs && a >= p.tau_rel * median;
}

// max_{c in C*} |h[t, c]| for every token.
std::vector<float> channel_set_absmax(std::span<const float> hidden, int64_t tokens,
                                      int64_t hidden_size, std::span<const int32_t> channels) {
  std::vector<float> out(static_cast<size_t>(tokens), 0.0f);
  for (int64_t t = 0; t < tokens; ++t)
    for (int32_t c : channels)
      out[static_cast<size_t>(t)] =
          std::max(out[static_cast<size_t>(t)], std::fabs(hidden[t * hidden_size + c]));
  return out;
}

void check_kvsink(const KvSinkCalibration& calibration, int64_t hidden_size,
                  const KvSinkParams& params, const std::string& what) {
  if (!std::isfinite(params.tau_k) || params.tau_k < 0)
    throw Error(what + ": tau_k must be finite and >= 0");
  if (calibration.layer < 0) return;
  if (calibration.channels.empty())
    throw Error(what + ": calibration of layer " + std::to_string(calibration.layer) +
                " has no channels");
  for (int32_t c : calibration.channels)
    if (c < 0 || c >= hidden_size)
      throw Error(what + ": calibration channel " + std::to_string(c) + " is outside [0, " +
                  std::to_string(hidden_size) + ")");
  if (!std::isfinite(calibration.median) || calibration.median < 0)
    throw Error(what + ": calibration median must be finite and >= 0");
}

void check_score_params(const SinkScoreParams& p) {
  if (p.tail < 0 || p.min_distance < 0 || p.first_layer < 0 || !std::isfinite(p.tau_mass))
    throw Error(
        "sink ground truth: tail, min_distance and first_layer must be >= 0 and "
        "tau_mass finite");
}

// Sums A[i, j] * (i + 1) over queries i >= j + min_distance of one [T, T] matrix into `sum`
// (order: query ascending within a matrix, matrices in the caller's order).
void accumulate_scores(std::span<const double> a, int64_t tokens, const SinkScoreParams& p,
                       std::vector<double>& sum) {
  for (size_t j = 0; j < sum.size(); ++j)
    for (int64_t i = static_cast<int64_t>(j) + p.min_distance; i < tokens; ++i)
      sum[j] += a[static_cast<size_t>(i * tokens) + j] * static_cast<double>(i + 1);
}

SinkScores finish_scores(std::vector<double> sum, int64_t matrices, int64_t tokens,
                         const SinkScoreParams& p) {
  SinkScores out;
  out.score = std::move(sum);
  for (size_t j = 0; j < out.score.size(); ++j) {
    const int64_t queries = tokens - (static_cast<int64_t>(j) + p.min_distance);
    // No query is far enough from j: the mean is over an empty set; score 0 (never a sink).
    out.score[j] = queries > 0 ? out.score[j] / static_cast<double>(matrices * queries) : 0.0;
    if (queries > 0 && out.score[j] >= p.tau_mass) out.sinks.push_back(static_cast<int32_t>(j));
  }
  return out;
}

size_t score_count(int64_t tokens, const SinkScoreParams& p) {
  return tokens >= p.tail ? static_cast<size_t>(tokens - p.tail + 1) : 0;
}

// median_t |h[t, c]| of every channel c (docs/spec.md §4's median: element floor(T/2) ascending).
std::vector<float> channel_medians(std::span<const float> hidden, int64_t tokens,
                                   int64_t hidden_size) {
  std::vector<float> out(static_cast<size_t>(hidden_size));
  std::vector<float> column(static_cast<size_t>(tokens));
  for (int64_t c = 0; c < hidden_size; ++c) {
    for (int64_t t = 0; t < tokens; ++t)
      column[static_cast<size_t>(t)] = std::fabs(hidden[static_cast<size_t>(t * hidden_size + c)]);
    const size_t mid = column.size() / 2;
    std::nth_element(column.begin(), column.begin() + static_cast<std::ptrdiff_t>(mid),
                     column.end());
    out[static_cast<size_t>(c)] = column[mid];
  }
  return out;
}

}  // namespace

void check_hidden_shape(size_t size, int64_t tokens, int64_t hidden_size, const std::string& what) {
  if (tokens < 1 || hidden_size < 1)
    throw Error(what + ": tokens (" + std::to_string(tokens) + ") and hidden size (" +
                std::to_string(hidden_size) + ") must be positive");
  const int64_t n = shape_numel({tokens, hidden_size}, what);
  if (static_cast<int64_t>(size) != n)
    throw Error(what + ": has " + std::to_string(size) + " values, [" + std::to_string(tokens) +
                ", " + std::to_string(hidden_size) + "] needs " + std::to_string(n));
}

TokenAbsmax token_absmax(std::span<const float> hidden, int64_t tokens, int64_t hidden_size) {
  check_hidden(hidden, tokens, hidden_size, "token_absmax hidden");
  TokenAbsmax out;
  out.absmax.assign(static_cast<size_t>(tokens), 0.0f);
  out.argmax.assign(static_cast<size_t>(tokens), 0);
  // max is exact in any order; strict > keeps the lowest channel on ties.
#pragma omp parallel for schedule(static) if (tokens * hidden_size > 65536)
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = hidden.data() + t * hidden_size;
    float best = std::fabs(row[0]);
    int32_t arg = 0;
    for (int64_t c = 1; c < hidden_size; ++c) {
      const float a = std::fabs(row[c]);
      if (a > best) {
        best = a;
        arg = static_cast<int32_t>(c);
      }
    }
    out.absmax[static_cast<size_t>(t)] = best;
    out.argmax[static_cast<size_t>(t)] = arg;
  }
  return out;
}

float median_floor(std::span<const float> values) {
  if (values.empty()) throw Error("median: no values");
  require_finite(values, "median input");
  std::vector<float> sorted(values.begin(), values.end());
  const size_t mid = sorted.size() / 2;
  std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(mid), sorted.end());
  return sorted[mid];
}

MassiveRule parse_massive_rule(const std::string& name) {
  if (name == "token") return MassiveRule::Token;
  if (name == "channel") return MassiveRule::Channel;
  throw Error("unknown massive-activation rule '" + name + "' (known: token, channel)");
}

const char* massive_rule_name(MassiveRule rule) {
  return rule == MassiveRule::Channel ? "channel" : "token";
}

std::vector<MassiveToken> massive_tokens(std::span<const float> hidden, int64_t tokens,
                                         int64_t hidden_size, const MassiveParams& params) {
  check_massive_params(params, "massive_tokens");
  const TokenAbsmax a = token_absmax(hidden, tokens, hidden_size);
  std::vector<MassiveToken> out;
  if (params.rule == MassiveRule::Token) {
    const float median = median_floor(a.absmax);
    for (int64_t t = 0; t < tokens; ++t) {
      const auto i = static_cast<size_t>(t);
      if (is_massive(a.absmax[i], median, params))
        out.push_back({static_cast<int32_t>(t), a.absmax[i], a.argmax[i]});
    }
    return out;
  }
  const std::vector<float> median = channel_medians(hidden, tokens, hidden_size);
  for (int64_t t = 0; t < tokens; ++t) {
    int32_t channel = -1;
    float best = 0.0f;
    for (int64_t c = 0; c < hidden_size; ++c) {
      const float v = std::fabs(hidden[static_cast<size_t>(t * hidden_size + c)]);
      if (is_massive(v, median[static_cast<size_t>(c)], params) && (channel < 0 || v > best)) {
        channel = static_cast<int32_t>(c);
        best = v;
      }
    }
    if (channel >= 0)
      out.push_back({static_cast<int32_t>(t), a.absmax[static_cast<size_t>(t)], channel});
  }
  return out;
}

std::vector<int32_t> pfn_sinks(int64_t tokens, int64_t n) {
  if (tokens < 0 || n < 0)
    throw Error("pfn_sinks: tokens (" + std::to_string(tokens) + ") and N (" + std::to_string(n) +
                ") must be >= 0");
  std::vector<int32_t> out(static_cast<size_t>(std::min(tokens, n)));
  std::iota(out.begin(), out.end(), 0);
  return out;
}

std::vector<int32_t> pivot_tokens(std::span<const float> hidden, int64_t tokens,
                                  int64_t hidden_size, const PivotParams& params) {
  check_hidden(hidden, tokens, hidden_size, "pivot_tokens hidden");
  if (params.top_k < 0) throw Error("pivot_tokens: top_k must be >= 0");
  const auto n = static_cast<int64_t>(hidden.size());
  const int64_t k = std::min(params.top_k, n);
  std::vector<int64_t> index(static_cast<size_t>(n));
  std::iota(index.begin(), index.end(), int64_t{0});
  // Descending |h|, ties by lower flat index: a strict total order, so partial_sort is exact.
  std::partial_sort(index.begin(), index.begin() + k, index.end(), [&](int64_t a, int64_t b) {
    const float fa = std::fabs(hidden[static_cast<size_t>(a)]);
    const float fb = std::fabs(hidden[static_cast<size_t>(b)]);
    return fa != fb ? fa > fb : a < b;
  });
  std::vector<uint8_t> keep(static_cast<size_t>(tokens), 0);
  for (int64_t i = 0; i < k; ++i)
    keep[static_cast<size_t>(index[static_cast<size_t>(i)] / hidden_size)] = 1;
  if (params.pivot_requires_massive) {
    std::vector<uint8_t> massive(static_cast<size_t>(tokens), 0);
    for (const MassiveToken& m : massive_tokens(hidden, tokens, hidden_size, params.massive))
      massive[static_cast<size_t>(m.token)] = 1;
    for (size_t t = 0; t < keep.size(); ++t) keep[t] = keep[t] && massive[t];
  }
  std::vector<int32_t> out;
  for (size_t t = 0; t < keep.size(); ++t)
    if (keep[t]) out.push_back(static_cast<int32_t>(t));
  return out;
}

LayerSinks massive_activation_sinks(const std::vector<std::span<const float>>& layers,
                                    int64_t tokens, int64_t hidden_size,
                                    const MassiveParams& params, int64_t detection_layer) {
  if (layers.empty()) throw Error("massive_activation_sinks: no layers");
  if (detection_layer >= static_cast<int64_t>(layers.size()))
    throw Error("massive_activation_sinks: detection layer " + std::to_string(detection_layer) +
                " is outside the " + std::to_string(layers.size()) + " layers");
  LayerSinks out;
  for (size_t l = 0; l < layers.size(); ++l) {
    if (detection_layer >= 0 && static_cast<int64_t>(l) != detection_layer) continue;
    const std::vector<MassiveToken> m = massive_tokens(layers[l], tokens, hidden_size, params);
    if (m.empty() && detection_layer < 0) continue;
    out.layer = static_cast<int64_t>(l);
    for (const MassiveToken& token : m) out.tokens.push_back(token.token);
    break;
  }
  return out;
}

KvSinkCalibration calibrate_kvsink(const std::vector<std::span<const float>>& layers,
                                   int64_t tokens, int64_t hidden_size,
                                   const KvSinkParams& params) {
  if (params.max_channels < 1) throw Error("calibrate_kvsink: max_channels must be >= 1");
  KvSinkCalibration out;
  const LayerSinks found = massive_activation_sinks(layers, tokens, hidden_size, params.massive);
  if (found.layer < 0) return out;
  out.layer = found.layer;
  const std::span<const float> h = layers[static_cast<size_t>(found.layer)];
  // The reference each |h[t, c]| is compared with: the median token's max (token rule) or
  // the channel's own median (channel rule).
  std::vector<float> median;
  if (params.massive.rule == MassiveRule::Channel) {
    median = channel_medians(h, tokens, hidden_size);
  } else {
    median.assign(static_cast<size_t>(hidden_size),
                  median_floor(token_absmax(h, tokens, hidden_size).absmax));
  }
  // Largest qualifying |h| per channel over the massive tokens (0 = channel not qualifying).
  std::vector<float> strength(static_cast<size_t>(hidden_size), 0.0f);
  for (int32_t t : found.tokens)
    for (int64_t c = 0; c < hidden_size; ++c) {
      const float v = std::fabs(h[static_cast<size_t>(t * hidden_size + c)]);
      if (is_massive(v, median[static_cast<size_t>(c)], params.massive))
        strength[static_cast<size_t>(c)] = std::max(strength[static_cast<size_t>(c)], v);
    }
  std::vector<int32_t> channels;
  for (int64_t c = 0; c < hidden_size; ++c)
    if (strength[static_cast<size_t>(c)] > 0.0f) channels.push_back(static_cast<int32_t>(c));
  std::sort(channels.begin(), channels.end(), [&](int32_t x, int32_t y) {
    const float sx = strength[static_cast<size_t>(x)], sy = strength[static_cast<size_t>(y)];
    return sx != sy ? sx > sy : x < y;
  });
  if (channels.size() > static_cast<size_t>(params.max_channels))
    channels.resize(static_cast<size_t>(params.max_channels));
  out.channels = channels;
  out.median = median_floor(channel_set_absmax(h, tokens, hidden_size, out.channels));
  return out;
}

std::vector<int32_t> predict_kvsink(std::span<const float> hidden, int64_t tokens,
                                    int64_t hidden_size, const KvSinkCalibration& calibration,
                                    const KvSinkParams& params) {
  check_hidden(hidden, tokens, hidden_size, "predict_kvsink hidden");
  check_kvsink(calibration, hidden_size, params, "predict_kvsink");
  std::vector<int32_t> out;
  if (calibration.layer < 0) return out;
  const std::vector<float> m =
      channel_set_absmax(hidden, tokens, hidden_size, calibration.channels);
  const float median = median_floor(m);
  for (int64_t t = 0; t < tokens; ++t)
    if (m[static_cast<size_t>(t)] >= params.tau_k * median) out.push_back(static_cast<int32_t>(t));
  return out;
}

bool predict_kvsink_token(std::span<const float> row, const KvSinkCalibration& calibration,
                          const KvSinkParams& params) {
  check_hidden(row, 1, static_cast<int64_t>(row.size()), "predict_kvsink_token row");
  check_kvsink(calibration, static_cast<int64_t>(row.size()), params, "predict_kvsink_token");
  if (calibration.layer < 0) return false;
  const std::vector<float> m =
      channel_set_absmax(row, 1, static_cast<int64_t>(row.size()), calibration.channels);
  return m[0] >= params.tau_k * calibration.median;
}

SinkScores sink_scores_from_attention(const std::vector<std::vector<double>>& attention,
                                      int64_t tokens, const SinkScoreParams& params) {
  check_score_params(params);
  if (tokens < 1) throw Error("sink scores: tokens must be positive");
  if (attention.empty()) throw Error("sink scores: no attention matrices");
  const int64_t n = shape_numel({tokens, tokens}, "sink scores attention");
  std::vector<double> sum(score_count(tokens, params), 0.0);
  for (size_t m = 0; m < attention.size(); ++m) {
    if (static_cast<int64_t>(attention[m].size()) != n)
      throw Error("sink scores: attention matrix " + std::to_string(m) + " has " +
                  std::to_string(attention[m].size()) + " values, [T, T] needs " +
                  std::to_string(n));
    for (size_t i = 0; i < attention[m].size(); ++i)
      if (!std::isfinite(attention[m][i]))
        throw Error("sink scores: attention matrix " + std::to_string(m) +
                    " has a non-finite value at flat index " + std::to_string(i));
    accumulate_scores(attention[m], tokens, params, sum);
  }
  return finish_scores(std::move(sum), static_cast<int64_t>(attention.size()), tokens, params);
}

SinkScores sink_ground_truth(const std::vector<std::span<const float>>& q_layers,
                             const std::vector<std::span<const float>>& k_layers, int64_t tokens,
                             int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                             const SinkScoreParams& params) {
  check_score_params(params);
  if (q_layers.size() != k_layers.size())
    throw Error("sink ground truth: " + std::to_string(q_layers.size()) + " q layers but " +
                std::to_string(k_layers.size()) + " k layers");
  const auto layers = static_cast<int64_t>(q_layers.size());
  if (layers <= params.first_layer)
    throw Error("sink ground truth: averages layers " + std::to_string(params.first_layer) +
                " and above, so it needs at least " + std::to_string(params.first_layer + 1) +
                " layers; got " + std::to_string(layers));
  std::vector<double> sum(score_count(tokens, params), 0.0);
  // Layer by layer, head by head: one [T, T] matrix in memory at a time.
  for (int64_t l = params.first_layer; l < layers; ++l)
    for (int64_t h = 0; h < q_heads; ++h) {
      const std::vector<double> a =
          causal_attention_f64(q_layers[static_cast<size_t>(l)], k_layers[static_cast<size_t>(l)],
                               tokens, q_heads, kv_heads, head_dim, h);
      accumulate_scores(a, tokens, params, sum);
    }
  return finish_scores(std::move(sum), (layers - params.first_layer) * q_heads, tokens, params);
}

}  // namespace kvq
