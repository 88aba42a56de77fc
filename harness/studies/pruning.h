// Super Expert pruning study (docs/spec.md §5 "Study"): zero one expert's output in the synthetic
// MoE (harness/synth: the massive activations are caused by the planted Super Experts and the sinks
// follow from them) and report the change of the residual-stream massive activations (docs/spec.md
// §4 criterion, per layer, with the largest token's ratio to the median) and of the attention
// mass the planted sinks receive (docs/spec.md §4 ground-truth score). Scenario op
// "expert_pruning".
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "harness/recording/synth.h"
#include "harness/studies/studies.h"
#include "reference/sinks.h"

namespace kvq {

// One recording's massive activations and sink attention.
struct LayerMassive {
  int64_t layer = 0;
  std::vector<MassiveToken> massive;  // docs/spec.md §4 criterion, token order
  float max_absmax = 0.0f;            // largest token absmax of the layer
  int32_t max_token = 0;              // its token (lowest on ties)
  double max_ratio = 0.0;             // max_absmax / median_floor(token absmax)
};
struct PruningState {
  std::vector<LayerMassive> layers;
  int64_t massive = 0;              // massive (layer, token) pairs over all layers
  double max_ratio = 0.0;           // largest per-layer max_ratio
  std::vector<double> sink_scores;  // docs/spec.md §4 score of each planted sink token
  double sink_mass = 0.0;           // mean of sink_scores
  int64_t sinks = 0;                // tokens whose score reaches tau_mass (ground-truth sinks)
};

struct PruningParams {
  SynthParams synth;       // the unpruned model (experts > 0); pruned_experts is ignored
  MassiveParams massive;   // docs/spec.md §4 defaults
  SinkScoreParams scores;  // docs/spec.md §4 defaults
};

// What is pruned: "se<N>" (the N-th planted Super Expert by peak, from 1), "all_se" (every
// planted Super Expert at once) or "control" (an ordinary expert of the first Super Expert's
// layer that processes the same sink token 0, else the next non-Super expert id).
struct PruningResult {
  std::string target;
  std::vector<std::pair<int64_t, int64_t>> experts;  // (layer, expert) zeroed
  bool super_expert = false;                         // every pruned expert is a planted SE
  PruningState before, after;
  bool activations_identical = false;  // every q, k, k_pre_rope, v and hidden_in bit-equal
};

// Massive activations of every layer's hidden_in and the planted sinks' scores of a synthetic
// recording. Throws kvq::Error when a tensor is missing.
PruningState measure_pruning_state(const SynthRecording& recording, const PruningParams& params);

// Synthesizes the model with and without the target pruned and measures both.
PruningResult run_pruning(const PruningParams& params, const std::string& target);

// The scenario op (harness/studies/studies.h): SynthParams from the case keys (seed, layers,
// tokens, heads = KV heads, q_heads, head_dim, hidden, experts, top_k), `prune` the target,
// tau_abs/tau_rel/tau_mass the thresholds. Measurements: massive_before/after,
// max_ratio_before/after, sink_mass_before/after, sinks_before/after, activations_identical and
// per layer massive_before/after_L<l>, max_ratio_before/after_L<l>.
StudyOutcome pruning_study_case(const ScenarioCase& c);

}  // namespace kvq
