// `kvq experts`: the Super Experts of a recording (docs/spec.md §5) with the numbers that select
// them
// (P99.5, floor(max / 10)), scored against planted super_experts when the metadata has them, and
// the massive activations in the residual stream that follow them (Super Experts paper: the
// tokens a Super Expert processes carry the massive activations of later layers).
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "harness/studies/studies.h"
#include "reference/experts.h"
#include "reference/sinks.h"
#include "verify/metrics.h"

namespace kvq {

class SafetensorsFile;
class Store;

struct ExpertStudyParams {
  SuperExpertParams selection;  // docs/spec.md §5 defaults (include_layers 0.75)
  MassiveParams massive;        // docs/spec.md §4 defaults, for the residual-stream report
  int64_t top = 8;              // strongest experts listed for context (table output)
};

// One token of one layer's residual stream (hidden_in): its max |h|, the channel, the ratio to
// the layer's median token absmax (docs/spec.md §4 median) and whether it meets §4's criterion.
struct ResidualToken {
  int64_t token = 0;
  float absmax = 0.0f;
  int32_t channel = 0;
  double ratio = 0.0;
  bool massive = false;
};
struct ResidualLayer {
  int64_t layer = 0;
  float median = 0.0f;
  // The layer's massive tokens, strongest first; when none is massive, the 3 strongest tokens.
  std::vector<ResidualToken> tokens;
};

struct ExpertStudy {
  std::string path;
  int64_t layers = 0, moe_layers = 0, tokens = 0, top_k = 0, num_experts = 0;
  bool num_experts_from_metadata = false;  // else max id + 1 (unrouted high ids unseen)
  bool has_argmax = false;
  ExpertStudyParams params;
  std::vector<std::vector<ExpertStat>> stats;  // [layer][expert]; empty for dense layers
  int64_t considered_layers = 0;
  int64_t considered_values = 0;
  double p99_5 = 0.0, max_all = 0.0, threshold = 0.0;  // threshold = floor(max_all / 10)
  std::vector<SuperExpert> super_experts;              // docs/spec.md §5 output, ranked
  std::vector<SuperExpert> strongest;  // the `top` largest m of considered layers (rank by m)
  std::optional<std::vector<LayerExpert>> planted;
  std::optional<SetComparison<LayerExpert>> vs_planted;
  std::vector<ResidualLayer> residual;  // empty when the recording has no hidden_in
};

// Reads layers.{i}.experts.ids / .down_absmax / optional .down_argmax of every layer. Throws
// kvq::Error naming the file and tensor on a missing or mis-shaped tensor, or when no layer has
// experts.
// The recording's expert count from its metadata (num_experts or n_experts), when present.
// Throws kvq::Error naming the file and key when it is not a non-negative integer or exceeds
// kMaxExperts (harness/io/size_limits.h).
std::optional<int64_t> metadata_experts(const SafetensorsFile& file);

ExpertStudy run_expert_study(const SafetensorsFile& file, const ExpertStudyParams& params = {});

// "table" (for people), "csv" (one row per Super Expert), "json" (a list of objects: rank,
// layer, expert, max_abs, token, channel). csv and json print only the list; `summary` (may be
// null) then receives the selection numbers and the residual report as text.
void print_expert_study(std::ostream& out, std::ostream* summary, const ExpertStudy& study,
                        const std::string& format);

// A case "selection" (measurements super_experts, p99_5, threshold, max_all and, when planted,
// planted_precision / planted_recall) and one case per Super Expert (max_abs). Returns the run id.
int64_t store_expert_study(Store& store, const ExpertStudy& study, const std::string& command);

std::string expert_study_repro(const ExpertStudy& study);

// Study op "experts" (harness/studies/studies.h): the expert study above on the case's recording
// (harness/recording/case_recording.h), the Super Experts and the numbers that select them as
// measurements (docs/readme-studies.md "Study ops").
// Keys: include_layers, tau_abs, tau_rel (residual-stream report). Measurements: super_experts,
// p99_5, threshold, max_all, planted_precision / planted_recall when planted, one
// se.L<l>.E<e>.max_abs per Super Expert, and per layer with hidden_in residual.L<l>.ratio (its
// strongest token's max |h| / the layer's median token) and residual.L<l>.massive (tokens meeting
// docs/spec.md §4). details: the Super Experts with token and channel, the residual report, planted
// misses and extras.
StudyOutcome experts_op(const ScenarioCase& c);

}  // namespace kvq
