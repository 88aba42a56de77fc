// Study op "sinks" (harness/studies.h): `kvq sinks` (harness/sink_study.h) on the case's
// recording (harness/case_recording.h), one case per scenario case, every predictor's scores
// as measurements named PREDICTOR.METRIC (docs/readme-studies.md "Study ops").
#pragma once

#include "harness/studies.h"

namespace kvq {

// Keys: tau_mass, pfn (one N per case; sweep it), tau_abs, tau_rel, tau_k. Measurements, for
// each predictor P in pfnN, massive, pivot, pivot+massive, kvsink: P.precision, P.recall,
// P.predicted against the attention-mass ground truth, and P.planted_precision,
// P.planted_recall when the recording has planted sinks; truth.sinks, truth.max_score and
// (planted) truth.planted_precision, truth.planted_recall. details: each predictor's predicted,
// missed, extra and unscored tokens, the ground truth, the planted set and the top scores.
StudyOutcome sinks_op(const ScenarioCase& c);

}  // namespace kvq
