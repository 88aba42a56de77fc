#include "harness/experts_op.h"

#include <cstdio>
#include <string>

#include "harness/case_recording.h"
#include "harness/expert_study.h"
#include "harness/safetensors.h"
#include "reference/error.h"

namespace kvq {

namespace {

std::string number(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.4g", v);
  return text;
}

nlohmann::json pairs(const std::vector<LayerExpert>& list) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [l, e] : list) out.push_back({l, e});
  return out;
}

}  // namespace

StudyOutcome experts_op(const ScenarioCase& c) {
  ExpertStudyParams p;
  p.selection.include_layers = case_double(c, "include_layers", p.selection.include_layers);
  p.massive.tau_abs = static_cast<float>(case_double(c, "tau_abs", p.massive.tau_abs));
  p.massive.tau_rel = static_cast<float>(case_double(c, "tau_rel", p.massive.tau_rel));
  const std::string path = case_recording(c);
  const ExpertStudy s = [&] {
    try {
      return run_expert_study(SafetensorsFile::open(path), p);
    } catch (const Error& e) {
      throw Error(c.where + ": experts: " + e.what());
    }
  }();

  StudyOutcome out;
  const auto measure = [&](const std::string& metric, double value, const char* unit) {
    out.measurements.push_back({"ref", metric, value, unit, 1, 0.0});
  };
  measure("super_experts", static_cast<double>(s.super_experts.size()), "experts");
  measure("p99_5", s.p99_5, "abs");
  measure("threshold", s.threshold, "abs");
  measure("max_all", s.max_all, "abs");
  if (s.vs_planted) {
    measure("planted_precision", s.vs_planted->precision, "ratio");
    measure("planted_recall", s.vs_planted->recall, "ratio");
  }
  nlohmann::json list = nlohmann::json::array();
  for (const SuperExpert& se : s.super_experts) {
    measure("se.L" + std::to_string(se.layer) + ".E" + std::to_string(se.expert) + ".max_abs",
            se.max_abs, "abs");
    list.push_back({{"rank", se.rank},
                    {"layer", se.layer},
                    {"expert", se.expert},
                    {"max_abs", se.max_abs},
                    {"token", se.token},
                    {"channel", se.channel}});
  }
  nlohmann::json residual = nlohmann::json::array();
  for (const ResidualLayer& r : s.residual) {
    int64_t massive = 0;
    nlohmann::json tokens = nlohmann::json::array();
    for (const ResidualToken& t : r.tokens) {
      massive += t.massive ? 1 : 0;
      tokens.push_back({{"token", t.token},
                        {"absmax", t.absmax},
                        {"channel", t.channel},
                        {"ratio", t.ratio},
                        {"massive", t.massive}});
    }
    const std::string layer = "residual.L" + std::to_string(r.layer);
    measure(layer + ".ratio", r.tokens.empty() ? 0.0 : r.tokens.front().ratio, "ratio");
    measure(layer + ".massive", static_cast<double>(massive), "tokens");
    residual.push_back({{"layer", r.layer}, {"median", r.median}, {"tokens", tokens}});
  }
  out.details = {{"recording", path},
                 {"considered_layers", s.considered_layers},
                 {"considered_values", s.considered_values},
                 {"num_experts", s.num_experts},
                 {"super_experts", list},
                 {"residual", residual}};
  if (s.planted) out.details["planted"] = pairs(*s.planted);
  if (s.vs_planted) {
    out.details["planted_missed"] = pairs(s.vs_planted->missed);
    out.details["planted_extra"] = pairs(s.vs_planted->extra);
  }
  std::string note = std::to_string(s.super_experts.size()) + " super experts";
  for (const SuperExpert& se : s.super_experts)
    note += (&se == &s.super_experts.front() ? ": " : ", ") + std::string("(") +
            std::to_string(se.layer) + ", " + std::to_string(se.expert) + ") " + number(se.max_abs);
  if (s.vs_planted)
    note += "; planted recall " + number(s.vs_planted->recall) + ", precision " +
            number(s.vs_planted->precision);
  out.note = note;
  return out;
}

}  // namespace kvq
