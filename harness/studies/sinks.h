// `kvq sinks`: scores every sink predictor of docs/spec.md §4 (PFN, massive activations, pivot
// tokens,
// KVSink) on one recording against the attention-mass ground truth recomputed in fp64 from its
// q and k, and against the planted sinks when the recording's metadata has them (kvq synth).
// Decisions are compared as sets with the mismatches listed (STYLE.md rule 13).
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "harness/studies/studies.h"
#include "reference/sinks.h"
#include "verify/metrics.h"

namespace kvq {

class SafetensorsFile;
class Store;

struct SinkStudyParams {
  double tau_mass = 5.0;             // docs/spec.md §4 default
  std::vector<int64_t> pfn = {1, 4};  // PFN N values (1 default, 4 StreamingLLM)
  int64_t top = 10;                  // ground-truth scores printed for the top tokens
  MassiveParams massive;             // docs/spec.md §4 defaults
  int64_t pivot_top_k = 20;          // docs/spec.md §4 default k
  KvSinkParams kvsink;               // docs/spec.md §4 defaults; .massive is replaced by massive
};

struct SinkPredictor {
  std::string name;                  // "pfn1", "massive", "pivot", "kvsink", ...
  std::string rule;                  // one line: what it predicts and where
  std::vector<int64_t> tokens;       // predicted, ascending, only tokens the truth scores
  std::vector<int64_t> unscored;     // predicted beyond the scored range (j > T - tail)
  SetComparison<int64_t> vs_truth;   // against the attention-mass ground truth
  std::optional<SetComparison<int64_t>> vs_planted;  // against metadata sink_tokens
};

struct SinkStudy {
  std::string path;
  int64_t layers = 0, tokens = 0, hidden = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
  SinkStudyParams params;
  SinkScoreParams score_params;
  SinkScores truth;                          // scores for j <= T - tail, sinks >= tau_mass
  std::optional<std::vector<int64_t>> planted;  // metadata sink_tokens
  std::optional<SetComparison<int64_t>> truth_vs_planted;
  std::vector<int32_t> token_ids;            // metadata token ids when present, else empty
  LayerSinks massive;                        // detection layer and its massive tokens
  std::vector<std::vector<int32_t>> pivots;  // per layer
  KvSinkCalibration kvsink;
  std::vector<SinkPredictor> predictors;
};

// Reads layers.{i}.q, .k (post-RoPE) and .hidden_in of every layer. Throws kvq::Error naming the
// file and tensor when one is missing or mis-shaped, or the recording is too short for the
// ground truth (T >= tail, L > first_layer).
SinkStudy run_sink_study(const SafetensorsFile& file, const SinkStudyParams& params = {});

// format: "table" (for people), "csv" (one row per predictor and reference), "json" (one object).
void print_sink_study(std::ostream& out, const SinkStudy& study, const std::string& format);

// One case per predictor (op "sinks"), measurements precision and recall against the ground
// truth (and planted_precision / planted_recall when planted), in one run. Returns the run id.
int64_t store_sink_study(Store& store, const SinkStudy& study, const std::string& command);

// The `kvq sinks` command line that reruns `study` (the repro string of its cases).
std::string sink_study_repro(const SinkStudy& study);

// Study op "sinks" (harness/studies/studies.h): the sink study above on the case's recording
// (harness/recording/case_recording.h), one case per scenario case, every predictor's scores as
// measurements named PREDICTOR.METRIC (docs/readme-studies.md "Study ops").
// Keys: tau_mass, pfn (one N per case; sweep it), tau_abs, tau_rel, tau_k. Measurements, for
// each predictor P in pfnN, massive, pivot, pivot+massive, kvsink: P.precision, P.recall,
// P.predicted against the attention-mass ground truth, and P.planted_precision,
// P.planted_recall when the recording has planted sinks; truth.sinks, truth.max_score and
// (planted) truth.planted_precision, truth.planted_recall. details: each predictor's predicted,
// missed, extra and unscored tokens, the ground truth, the planted set and the top scores.
StudyOutcome sinks_op(const ScenarioCase& c);

}  // namespace kvq
