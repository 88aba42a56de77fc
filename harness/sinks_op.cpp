#include "harness/sinks_op.h"

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "harness/case_recording.h"
#include "harness/safetensors.h"
#include "harness/sink_study.h"
#include "reference/error.h"

namespace kvq {

namespace {

// Scores shown in details: the strongest tokens by ground-truth score.
constexpr size_t kTopScores = 10;

std::string number(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3g", v);
  return text;
}

}  // namespace

StudyOutcome sinks_op(const ScenarioCase& c) {
  SinkStudyParams p;
  p.tau_mass = case_double(c, "tau_mass", p.tau_mass);
  p.pfn = {case_int(c, "pfn", 1)};  // SPEC.md §4 default N = 1; a scenario sweeps [1, 4]
  p.massive.tau_abs = static_cast<float>(case_double(c, "tau_abs", p.massive.tau_abs));
  p.massive.tau_rel = static_cast<float>(case_double(c, "tau_rel", p.massive.tau_rel));
  p.massive.rule = parse_massive_rule(case_string(c, "massive_rule", "token"));
  p.kvsink.tau_k = static_cast<float>(case_double(c, "tau_k", p.kvsink.tau_k));
  const std::string path = case_recording(c);
  const SinkStudy s = [&] {
    try {
      return run_sink_study(SafetensorsFile::open(path), p);
    } catch (const Error& e) {
      throw Error(c.where + ": sinks: " + e.what());
    }
  }();

  StudyOutcome out;
  const auto measure = [&](const std::string& metric, double value, const char* unit) {
    out.measurements.push_back({"ref", metric, value, unit, 1, 0.0});
  };
  measure("truth.sinks", static_cast<double>(s.truth.sinks.size()), "tokens");
  const double max_score =
      s.truth.score.empty() ? 0.0 : *std::max_element(s.truth.score.begin(), s.truth.score.end());
  measure("truth.max_score", max_score, "ratio");
  if (s.truth_vs_planted) {
    measure("truth.planted_precision", s.truth_vs_planted->precision, "ratio");
    measure("truth.planted_recall", s.truth_vs_planted->recall, "ratio");
  }
  nlohmann::json predictors = nlohmann::json::object();
  for (const SinkPredictor& pr : s.predictors) {
    measure(pr.name + ".precision", pr.vs_truth.precision, "ratio");
    measure(pr.name + ".recall", pr.vs_truth.recall, "ratio");
    measure(pr.name + ".predicted", static_cast<double>(pr.tokens.size() + pr.unscored.size()),
            "tokens");
    nlohmann::json d = {{"rule", pr.rule},
                        {"predicted", pr.tokens},
                        {"unscored", pr.unscored},
                        {"missed", pr.vs_truth.missed},
                        {"extra", pr.vs_truth.extra}};
    if (pr.vs_planted) {
      measure(pr.name + ".planted_precision", pr.vs_planted->precision, "ratio");
      measure(pr.name + ".planted_recall", pr.vs_planted->recall, "ratio");
      d["planted_missed"] = pr.vs_planted->missed;
      d["planted_extra"] = pr.vs_planted->extra;
    }
    predictors[pr.name] = std::move(d);
  }
  std::vector<size_t> order(s.truth.score.size());
  std::iota(order.begin(), order.end(), size_t{0});
  const size_t top = std::min(kTopScores, order.size());
  std::partial_sort(
      order.begin(), order.begin() + static_cast<std::ptrdiff_t>(top), order.end(),
      [&](size_t a, size_t b) {
        return s.truth.score[a] != s.truth.score[b] ? s.truth.score[a] > s.truth.score[b] : a < b;
      });
  nlohmann::json top_scores = nlohmann::json::array();
  for (size_t i = 0; i < top; ++i)
    top_scores.push_back({{"token", order[i]}, {"score", s.truth.score[order[i]]}});
  out.details = {{"recording", path},
                 {"truth", s.truth.sinks},
                 {"top_scores", top_scores},
                 {"predictors", predictors}};
  if (s.planted) out.details["planted"] = *s.planted;

  // Table note: the truth, then recall of PFN and KVSink, the predictors the papers compare.
  std::string note = "truth " + std::to_string(s.truth.sinks.size()) + " sinks";
  for (const SinkPredictor& pr : s.predictors)
    if (pr.name.rfind("pfn", 0) == 0 || pr.name == "kvsink")
      note += ", " + pr.name + " recall " + number(pr.vs_truth.recall) +
              (pr.vs_planted ? " (planted " + number(pr.vs_planted->recall) + ")" : "");
  out.note = note;
  return out;
}

}  // namespace kvq
