// Study op "experts" (harness/studies.h): `kvq experts` (harness/expert_study.h) on the case's
// recording (harness/case_recording.h), the Super Experts and the numbers that select them as
// measurements (docs/readme-studies.md "Study ops").
#pragma once

#include "harness/studies.h"

namespace kvq {

// Keys: include_layers, tau_abs, tau_rel (residual-stream report). Measurements: super_experts,
// p99_5, threshold, max_all, planted_precision / planted_recall when planted, one
// se.L<l>.E<e>.max_abs per Super Expert, and per layer with hidden_in residual.L<l>.ratio (its
// strongest token's max |h| / the layer's median token) and residual.L<l>.massive (tokens meeting
// SPEC.md §4). details: the Super Experts with token and channel, the residual report, planted
// misses and extras.
StudyOutcome experts_op(const ScenarioCase& c);

}  // namespace kvq
