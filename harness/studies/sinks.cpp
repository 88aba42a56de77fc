// The sink study: docs/spec.md §4's predictors scored against its attention-mass ground truth.
#include "harness/studies/sinks.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "harness/io/safetensors.h"
#include "harness/recording/case_recording.h"
#include "harness/store/store.h"
#include "reference/error.h"

namespace kvq {

namespace {

std::string layer_tensor(int64_t l, const char* what) {
  return "layers." + std::to_string(l) + "." + what;
}

// Reads an F32/F16/BF16 tensor and checks its shape against `expected` (-1: any extent).
std::vector<float> read_shaped(const SafetensorsFile& f, const std::string& name,
                               const Shape& expected) {
  if (!f.has(name)) throw Error(f.path() + ": tensor " + name + " is missing");
  const Shape shape = f.view(name).shape;
  bool ok = shape.size() == expected.size();
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = expected[i] < 0 || shape[i] == expected[i];
  if (!ok)
    throw Error(f.path() + ": tensor " + name + " has shape " + shape_string(shape) +
                ", expected " + shape_string(expected) + " (-1: any)");
  return f.read_f32(name);
}

std::optional<std::vector<int64_t>> planted_sinks(const SafetensorsFile& f) {
  const auto it = f.metadata().find("sink_tokens");
  if (it == f.metadata().end()) return std::nullopt;
  try {
    const nlohmann::json j = nlohmann::json::parse(it->second);
    return j.get<std::vector<int64_t>>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(f.path() + ": metadata key sink_tokens is not a JSON list of integers (" +
                e.what() + ")");
  }
}

// Token ids for display only ("token_ids" from kvq synth, "tokens" from the llama2.c recorder);
// anything that is not a list of T integers is ignored, since nothing is decided on it.
std::vector<int32_t> token_ids(const SafetensorsFile& f, int64_t tokens) {
  for (const char* key : {"token_ids", "tokens"}) {
    const auto it = f.metadata().find(key);
    if (it == f.metadata().end()) continue;
    const nlohmann::json j = nlohmann::json::parse(it->second, nullptr, false);
    if (!j.is_array() || static_cast<int64_t>(j.size()) != tokens) continue;
    std::vector<int32_t> out;
    for (const auto& v : j) {
      if (!v.is_number_integer()) return {};
      out.push_back(v.get<int32_t>());
    }
    return out;
  }
  return {};
}

std::vector<int64_t> widen(const std::vector<int32_t>& v) { return {v.begin(), v.end()}; }

std::string list_string(const std::vector<int64_t>& v, size_t max_items = 24) {
  std::string s = "[";
  for (size_t i = 0; i < v.size() && i < max_items; ++i)
    s += (i ? ", " : "") + std::to_string(v[i]);
  if (v.size() > max_items) s += ", ... (" + std::to_string(v.size()) + " in all)";
  return s + "]";
}

std::string fixed(double x, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, x);
  return buf;
}

std::string csv_list(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? " " : "") + std::to_string(v[i]);
  return s;
}

nlohmann::json comparison_json(const SetComparison<int64_t>& c) {
  return {{"precision", c.precision}, {"recall", c.recall},
          {"true_positives", c.true_positives}, {"missed", c.missed}, {"extra", c.extra}};
}

// Tokens ordered by ground-truth score descending (ties: lower token), the first `n`.
std::vector<int64_t> top_scored(const SinkScores& truth, int64_t n) {
  std::vector<int64_t> order(truth.score.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return truth.score[static_cast<size_t>(a)] > truth.score[static_cast<size_t>(b)];
  });
  order.resize(std::min(order.size(), static_cast<size_t>(std::max<int64_t>(n, 0))));
  return order;
}

}  // namespace

SinkStudy run_sink_study(const SafetensorsFile& f, const SinkStudyParams& params) {
  SinkStudy s;
  s.path = f.path();
  s.params = params;
  s.score_params.tau_mass = params.tau_mass;
  s.params.pfn.clear();  // duplicates collapse: one predictor (and one case) per N
  for (int64_t n : params.pfn) {
    if (n < 0) throw Error("sinks: PFN N must be >= 0 (got " + std::to_string(n) + ")");
    if (std::find(s.params.pfn.begin(), s.params.pfn.end(), n) == s.params.pfn.end())
      s.params.pfn.push_back(n);
  }

  while (f.has(layer_tensor(s.layers, "q"))) ++s.layers;
  if (s.layers == 0) throw Error(f.path() + ": tensor layers.0.q is missing (no layers found)");
  if (s.layers <= s.score_params.first_layer)
    throw Error(f.path() + ": " + std::to_string(s.layers) + " layers; the sink ground truth " +
                "(docs/spec.md §4) averages layers " + std::to_string(s.score_params.first_layer) +
                " and above, so it needs at least " +
                std::to_string(s.score_params.first_layer + 1) + " layers");
  const Shape q0 = f.view(layer_tensor(0, "q")).shape;
  const Shape k0 = f.has(layer_tensor(0, "k")) ? f.view(layer_tensor(0, "k")).shape : Shape{};
  if (q0.size() != 3 || k0.size() != 3)
    throw Error(f.path() + ": layers.0.q and layers.0.k must be [T, heads, head_dim] (got " +
                shape_string(q0) + " and " + shape_string(k0) + ")");
  s.tokens = q0[0], s.q_heads = q0[1], s.head_dim = q0[2], s.kv_heads = k0[1];
  if (s.kv_heads < 1 || s.q_heads % s.kv_heads != 0)
    throw Error(f.path() + ": query heads " + std::to_string(s.q_heads) +
                " are not a multiple of KV heads " + std::to_string(s.kv_heads));
  if (s.tokens < s.score_params.tail)
    throw Error(f.path() + ": " + std::to_string(s.tokens) + " tokens; the sink ground truth " +
                "(docs/spec.md §4) scores tokens j <= T - " + std::to_string(s.score_params.tail) +
                " and needs T >= " + std::to_string(s.score_params.tail));

  std::vector<std::vector<float>> q(static_cast<size_t>(s.layers)),
      k(static_cast<size_t>(s.layers)), h(static_cast<size_t>(s.layers));
  for (int64_t l = 0; l < s.layers; ++l) {
    const auto i = static_cast<size_t>(l);
    q[i] = read_shaped(f, layer_tensor(l, "q"), {s.tokens, s.q_heads, s.head_dim});
    k[i] = read_shaped(f, layer_tensor(l, "k"), {s.tokens, s.kv_heads, s.head_dim});
    if (l == 0) {
      if (!f.has(layer_tensor(0, "hidden_in")))
        throw Error(f.path() + ": tensor layers.0.hidden_in is missing");
      const Shape hs = f.view(layer_tensor(0, "hidden_in")).shape;
      if (hs.size() != 2)
        throw Error(f.path() + ": tensor layers.0.hidden_in has shape " + shape_string(hs) +
                    ", expected [T, hidden]");
      s.hidden = hs[1];
    }
    h[i] = read_shaped(f, layer_tensor(l, "hidden_in"), {s.tokens, s.hidden});
  }
  const std::vector<std::span<const float>> qs(q.begin(), q.end()), ks(k.begin(), k.end()),
      hs(h.begin(), h.end());

  s.truth = sink_ground_truth(qs, ks, s.tokens, s.q_heads, s.kv_heads, s.head_dim, s.score_params);
  s.token_ids = token_ids(f, s.tokens);
  s.planted = planted_sinks(f);
  const std::vector<int64_t> truth = widen(s.truth.sinks);
  if (s.planted) s.truth_vs_planted = compare_sets(*s.planted, truth);

  // Scored range: the ground truth defines sink-ness only for j <= T - tail, so a prediction
  // beyond it is listed as unscored rather than counted as extra (docs/spec.md §4 note in report).
  const auto scored = static_cast<int64_t>(s.truth.score.size());
  const auto add = [&](std::string name, std::string rule, const std::vector<int64_t>& predicted) {
    SinkPredictor p;
    p.name = std::move(name);
    p.rule = std::move(rule);
    for (int64_t t : predicted) (t < scored ? p.tokens : p.unscored).push_back(t);
    p.vs_truth = compare_sets(truth, p.tokens);
    // The planted set is defined on every token, so the whole prediction is scored against it.
    if (s.planted) p.vs_planted = compare_sets(*s.planted, predicted);
    s.predictors.push_back(std::move(p));
  };

  for (int64_t n : s.params.pfn)
    add("pfn" + std::to_string(n), "tokens 0.." + std::to_string(n - 1),
        widen(pfn_sinks(s.tokens, n)));

  // Massive-activation sinks at the first layer with a massive token; calibration data = this
  // recording (the study has no other).
  s.massive = massive_activation_sinks(hs, s.tokens, s.hidden, params.massive);
  add("massive",
      s.massive.layer < 0 ? "no layer has a massive token"
                          : "massive at layer " + std::to_string(s.massive.layer),
      widen(s.massive.tokens));

  // Pivot tokens are per layer; the study scores their union (every token RotateKV keeps in
  // fp16 in at least one layer), with and without the massive-activation requirement.
  for (const bool requires_massive : {false, true}) {
    PivotParams pp;
    pp.top_k = params.pivot_top_k;
    pp.pivot_requires_massive = requires_massive;
    pp.massive = params.massive;
    std::set<int64_t> all;
    for (int64_t l = 0; l < s.layers; ++l) {
      const std::vector<int32_t> p =
          pivot_tokens(hs[static_cast<size_t>(l)], s.tokens, s.hidden, pp);
      if (!requires_massive) s.pivots.push_back(p);
      all.insert(p.begin(), p.end());
    }
    add(requires_massive ? "pivot+massive" : "pivot",
        "union over layers of top-" + std::to_string(pp.top_k) + " |hidden_in|" +
            (requires_massive ? " tokens that are massive" : ""),
        {all.begin(), all.end()});
  }

  // KVSink calibrated on this recording (l*, C*), then the whole-sequence prediction at l*.
  // One massive-activation criterion for every predictor: params.massive also finds l* and C*.
  KvSinkParams kp = params.kvsink;
  kp.massive = params.massive;
  s.params.kvsink.massive = params.massive;
  s.kvsink = calibrate_kvsink(hs, s.tokens, s.hidden, kp);
  std::vector<int64_t> kv;
  std::string rule = "uncalibrated: no layer has a massive token";
  if (s.kvsink.layer >= 0) {
    kv = widen(predict_kvsink(hs[static_cast<size_t>(s.kvsink.layer)], s.tokens, s.hidden,
                              s.kvsink, kp));
    rule = "layer " + std::to_string(s.kvsink.layer) + ", channels " +
           list_string(widen(s.kvsink.channels)) + ", tau_k " + fixed(kp.tau_k, 1);
  }
  add("kvsink", rule, kv);
  return s;
}

std::string sink_study_repro(const SinkStudy& s) {
  std::string pfn;
  for (size_t i = 0; i < s.params.pfn.size(); ++i)
    pfn += (i ? "," : "") + std::to_string(s.params.pfn[i]);
  return "kvq sinks " + s.path + " --tau-mass " + fixed(s.params.tau_mass, 6) + " --pfn " + pfn +
         " --tau-abs " + fixed(s.params.massive.tau_abs, 6) + " --tau-rel " +
         fixed(s.params.massive.tau_rel, 6) + " --tau-k " + fixed(s.params.kvsink.tau_k, 6);
}

void print_sink_study(std::ostream& out, const SinkStudy& s, const std::string& format) {
  if (format == "csv") {
    out << "reference,predictor,predicted,precision,recall,missed,extra,unscored\n";
    for (const SinkPredictor& p : s.predictors) {
      const auto row = [&](const char* ref, const SetComparison<int64_t>& c,
                           const std::vector<int64_t>& predicted,
                           const std::vector<int64_t>& unscored) {
        out << ref << "," << p.name << "," << predicted.size() << "," << fixed(c.precision, 4)
            << "," << fixed(c.recall, 4) << "," << csv_list(c.missed) << "," << csv_list(c.extra)
            << "," << csv_list(unscored) << "\n";
      };
      row("attention", p.vs_truth, p.tokens, p.unscored);
      if (p.vs_planted) {
        std::vector<int64_t> all = p.tokens;
        all.insert(all.end(), p.unscored.begin(), p.unscored.end());
        row("planted", *p.vs_planted, all, {});
      }
    }
    return;
  }
  if (format == "json") {
    nlohmann::json j;
    j["recording"] = s.path;
    j["layers"] = s.layers;
    j["tokens"] = s.tokens;
    j["tau_mass"] = s.params.tau_mass;
    j["scored_tokens"] = s.truth.score.size();
    j["ground_truth"] = {{"sinks", s.truth.sinks}, {"scores", s.truth.score}};
    if (s.planted) {
      j["planted"] = *s.planted;
      j["ground_truth_vs_planted"] = comparison_json(*s.truth_vs_planted);
    }
    j["kvsink_calibration"] = {{"layer", s.kvsink.layer},
                               {"channels", s.kvsink.channels},
                               {"median", s.kvsink.median}};
    j["pivots_per_layer"] = s.pivots;
    nlohmann::json preds = nlohmann::json::array();
    for (const SinkPredictor& p : s.predictors) {
      nlohmann::json o = {{"name", p.name},
                          {"rule", p.rule},
                          {"tokens", p.tokens},
                          {"unscored", p.unscored},
                          {"vs_attention", comparison_json(p.vs_truth)}};
      if (p.vs_planted) o["vs_planted"] = comparison_json(*p.vs_planted);
      preds.push_back(o);
    }
    j["predictors"] = preds;
    out << j.dump(2) << "\n";
    return;
  }
  if (format != "table") throw Error("--format must be table, csv or json (got '" + format + "')");

  out << s.path << ": " << s.layers << " layers, " << s.tokens << " tokens, " << s.q_heads << "/"
      << s.kv_heads << " heads of " << s.head_dim << ", hidden " << s.hidden << "\n";
  out << "ground truth (docs/spec.md §4): mean over layers >= " << s.score_params.first_layer
      << ", all heads, queries i >= j + " << s.score_params.min_distance
      << " of A[i,j]*(i+1), fp64; tokens 0.." << s.truth.score.size() - 1
      << " scored; sink if score >= " << fixed(s.params.tau_mass, 2) << ": "
      << list_string(widen(s.truth.sinks)) << "\n";
  if (s.planted)
    out << "planted sinks (metadata): " << list_string(*s.planted) << "; ground truth recall "
        << fixed(s.truth_vs_planted->recall, 3) << ", precision "
        << fixed(s.truth_vs_planted->precision, 3) << "\n";

  out << "\ntop tokens by ground-truth score (columns: predicted by)\n";
  char line[512];
  std::snprintf(line, sizeof line, "%5s %6s %7s %10s %5s ", "rank", "token", "id", "score", "sink");
  out << line;
  for (const SinkPredictor& p : s.predictors) out << " " << p.name;
  out << "\n";
  const std::vector<int64_t> top = top_scored(s.truth, s.params.top);
  for (size_t r = 0; r < top.size(); ++r) {
    const int64_t t = top[r];
    const double score = s.truth.score[static_cast<size_t>(t)];
    std::snprintf(line, sizeof line, "%5zu %6lld %7s %10.3f %5s ", r + 1,
                  static_cast<long long>(t),
                  s.token_ids.empty() ? "-"
                                      : std::to_string(s.token_ids[static_cast<size_t>(t)]).c_str(),
                  score, score >= s.params.tau_mass ? "yes" : "");
    out << line;
    for (const SinkPredictor& p : s.predictors) {
      const bool hit = std::binary_search(p.tokens.begin(), p.tokens.end(), t);
      out << " " << std::string(p.name.size() - 1, ' ') << (hit ? "x" : ".");
    }
    out << "\n";
  }

  out << "\npredictors against the ground truth" << (s.planted ? " (and the planted sinks)" : "")
      << "\n";
  std::snprintf(line, sizeof line, "%-14s %5s %9s %7s  %s\n", "predictor", "n", "precision",
                "recall", "rule");
  out << line;
  for (const SinkPredictor& p : s.predictors) {
    std::snprintf(line, sizeof line, "%-14s %5zu %9.3f %7.3f  %s\n", p.name.c_str(),
                  p.tokens.size(), p.vs_truth.precision, p.vs_truth.recall, p.rule.c_str());
    out << line;
    if (!p.vs_truth.missed.empty()) out << "    missed " << list_string(p.vs_truth.missed) << "\n";
    if (!p.vs_truth.extra.empty()) out << "    extra  " << list_string(p.vs_truth.extra) << "\n";
    if (!p.unscored.empty())
      out << "    beyond the scored range (not counted) " << list_string(p.unscored) << "\n";
    if (p.vs_planted) {
      const SetComparison<int64_t>& c = *p.vs_planted;
      out << "    vs planted: precision " << fixed(c.precision, 3) << ", recall "
          << fixed(c.recall, 3);
      if (!c.missed.empty()) out << ", missed " << list_string(c.missed);
      if (!c.extra.empty()) out << ", extra " << list_string(c.extra);
      out << "\n";
    }
  }
  out << "\npivot tokens per layer (top-" << s.params.pivot_top_k << " |hidden_in|)\n";
  for (size_t l = 0; l < s.pivots.size(); ++l)
    out << "  layer " << l << ": " << list_string(widen(s.pivots[l])) << "\n";
}

int64_t store_sink_study(Store& store, const SinkStudy& s, const std::string& command) {
  const int64_t run = store.begin_run(collect_run_info(s.path, command));
  const std::string stem = std::filesystem::path(s.path).stem().string();
  for (const SinkPredictor& p : s.predictors) {
    CaseRecord record;
    record.name = "sinks/" + stem + "/" + p.name;
    record.op = "sinks";
    nlohmann::json params = {{"study", "sinks"},
                             {"recording", s.path},
                             {"predictor", p.name},
                             {"rule", p.rule},
                             {"tau_mass", s.params.tau_mass},
                             {"predicted", p.tokens},
                             {"unscored", p.unscored},
                             {"truth", s.truth.sinks},
                             {"missed", p.vs_truth.missed},
                             {"extra", p.vs_truth.extra}};
    if (s.planted) params["planted"] = *s.planted;
    record.params_json = params.dump();
    record.repro = sink_study_repro(s);
    const auto measure = [](const char* metric, double value) {
      Measurement m;
      m.backend = "ref";
      m.metric = metric;
      m.value = value;
      m.unit = "ratio";
      return m;
    };
    std::vector<Measurement> ms = {measure("precision", p.vs_truth.precision),
                                   measure("recall", p.vs_truth.recall)};
    if (p.vs_planted) {
      ms.push_back(measure("planted_precision", p.vs_planted->precision));
      ms.push_back(measure("planted_recall", p.vs_planted->recall));
    }
    store.add_case(run, record, {}, ms);
  }
  store.finish_run(run, "complete");
  return run;
}

}  // namespace kvq


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
  const SinksCase& k = case_keys<SinksCase>(c);
  SinkStudyParams p;
  p.tau_mass = k.tau_mass;
  p.pfn = {k.pfn};  // docs/spec.md §4 default N = 1; a scenario sweeps [1, 4]
  p.massive.tau_abs = static_cast<float>(k.tau_abs);
  p.massive.tau_rel = static_cast<float>(k.tau_rel);
  p.massive.rule = parse_massive_rule(k.massive_rule);
  p.kvsink.tau_k = static_cast<float>(k.tau_k);
  const std::string path = case_recording(c, k);
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
