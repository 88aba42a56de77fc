// The Super Expert study: docs/spec.md §5 selection on a recording, with the numbers behind it.
#include "harness/studies/experts.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "harness/io/safetensors.h"
#include "harness/io/size_limits.h"
#include "harness/recording/case_recording.h"
#include "harness/store/store.h"
#include "reference/error.h"

namespace kvq {

namespace {

std::string layer_tensor(int64_t l, const char* what) {
  return "layers." + std::to_string(l) + "." + what;
}

bool has_layer(const SafetensorsFile& f, int64_t l) {
  for (const char* what : {"experts.ids", "hidden_in", "q", "k", "v"})
    if (f.has(layer_tensor(l, what))) return true;
  return false;
}

// [tokens, top_k] of `name`, with tokens equal to `tokens` when that is already known (>= 0).
Shape routing_shape(const SafetensorsFile& f, const std::string& name, int64_t tokens) {
  if (!f.has(name)) throw Error(f.path() + ": tensor " + name + " is missing");
  const Shape s = f.view(name).shape;
  if (s.size() != 2 || s[1] < 1 || (tokens >= 0 && s[0] != tokens))
    throw Error(f.path() + ": tensor " + name + " has shape " + shape_string(s) +
                ", expected [" + (tokens >= 0 ? std::to_string(tokens) : "T") + ", top_k]");
  return s;
}

}  // namespace

std::optional<int64_t> metadata_experts(const SafetensorsFile& f) {
  for (const char* key : {"num_experts", "n_experts"}) {
    const auto it = f.metadata().find(key);
    if (it == f.metadata().end()) continue;
    size_t used = 0;
    int64_t n = 0;
    try {
      n = std::stoll(it->second, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != it->second.size() || n < 0)
      throw Error(f.path() + ": metadata key " + key + " = '" + it->second +
                  "' is not a non-negative integer");
    check_limit(f.path(), std::string("metadata key ") + key, n, kMaxExperts);
    return n;
  }
  return std::nullopt;
}

namespace {

std::optional<std::vector<LayerExpert>> planted_experts(const SafetensorsFile& f) {
  const auto it = f.metadata().find("super_experts");
  if (it == f.metadata().end()) return std::nullopt;
  try {
    std::vector<LayerExpert> out;
    for (const auto& pair : nlohmann::json::parse(it->second))
      out.emplace_back(pair.at(0).get<int64_t>(), pair.at(1).get<int64_t>());
    return out;
  } catch (const nlohmann::json::exception& e) {
    throw Error(f.path() + ": metadata key super_experts is not a JSON list of [layer, expert] (" +
                e.what() + ")");
  }
}

constexpr size_t kStrongestShown = 3;

// Residual stream of every layer that has hidden_in: massive tokens (docs/spec.md §4) strongest
// first, or the kStrongestShown strongest tokens when none is massive.
std::vector<ResidualLayer> residual_report(const SafetensorsFile& f, int64_t layers,
                                           const MassiveParams& massive) {
  std::vector<ResidualLayer> out;
  for (int64_t l = 0; l < layers; ++l) {
    const std::string name = layer_tensor(l, "hidden_in");
    if (!f.has(name)) continue;
    const Shape s = f.view(name).shape;
    if (s.size() != 2)
      throw Error(f.path() + ": tensor " + name + " has shape " + shape_string(s) +
                  ", expected [T, hidden]");
    const std::vector<float> h = f.read_f32(name);
    const TokenAbsmax a = token_absmax(h, s[0], s[1]);
    ResidualLayer layer;
    layer.layer = l;
    layer.median = median_floor(a.absmax);
    const auto ratio = [&](float v) {
      return layer.median > 0.0f ? static_cast<double>(v) / static_cast<double>(layer.median)
                                 : std::numeric_limits<double>::infinity();
    };
    for (const MassiveToken& m : massive_tokens(h, s[0], s[1], massive))
      layer.tokens.push_back({m.token, m.absmax, m.channel, ratio(m.absmax), true});
    if (layer.tokens.empty()) {
      // No massive token: the strongest few still show where the residual stream peaks.
      std::vector<size_t> order(a.absmax.size());
      for (size_t t = 0; t < order.size(); ++t) order[t] = t;
      const size_t n = std::min<size_t>(kStrongestShown, order.size());
      std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n), order.end(),
                        [&](size_t x, size_t y) {
                          return a.absmax[x] != a.absmax[y] ? a.absmax[x] > a.absmax[y] : x < y;
                        });
      for (size_t i = 0; i < n; ++i)
        layer.tokens.push_back({static_cast<int64_t>(order[i]), a.absmax[order[i]],
                                a.argmax[order[i]], ratio(a.absmax[order[i]]), false});
    }
    std::stable_sort(layer.tokens.begin(), layer.tokens.end(),
                     [](const ResidualToken& x, const ResidualToken& y) {
                       return x.absmax > y.absmax;
                     });
    out.push_back(std::move(layer));
  }
  return out;
}

// A formatted table row without the padding an empty last column leaves.
std::string row(const char* text) {
  std::string s = text;
  const bool newline = !s.empty() && s.back() == '\n';
  if (newline) s.pop_back();
  s.erase(s.find_last_not_of(' ') + 1);
  return newline ? s + "\n" : s;
}

std::string fixed(double x, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, x);
  return buf;
}

std::string pairs_string(const std::vector<LayerExpert>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i)
    s += (i ? ", " : "") + std::string("(") + std::to_string(v[i].first) + ", " +
         std::to_string(v[i].second) + ")";
  return s + "]";
}

void print_selection_summary(std::ostream& out, const ExpertStudy& s) {
  out << "selection (docs/spec.md §5): layers 0.." << s.considered_layers - 1 << " of " << s.layers
      << " (include_layers " << fixed(s.params.selection.include_layers, 2) << "), "
      << s.considered_values << " values (" << s.num_experts << " experts per MoE layer, "
      << (s.num_experts_from_metadata ? "from metadata" : "max routed id + 1")
      << "); P99.5 = " << fixed(s.p99_5, 4) << ", max = " << fixed(s.max_all, 4)
      << ", floor(max / 10) = " << fixed(s.threshold, 1) << "; Super Expert: m > P99.5 and m > "
      << fixed(s.threshold, 1) << "\n";
  if (s.planted) {
    const SetComparison<LayerExpert>& c = *s.vs_planted;
    out << "planted super_experts (metadata): " << pairs_string(*s.planted) << "; recall "
        << fixed(c.recall, 3) << ", precision " << fixed(c.precision, 3);
    if (!c.missed.empty()) out << ", missed " << pairs_string(c.missed);
    if (!c.extra.empty()) out << ", extra " << pairs_string(c.extra);
    out << "\n";
  }
}

void print_residual(std::ostream& out, const ExpertStudy& s) {
  if (s.residual.empty()) {
    out << "no hidden_in in the recording: no residual-stream report\n";
    return;
  }
  out << "residual stream (hidden_in) per layer: massive tokens (docs/spec.md §4: >= "
      << fixed(s.params.massive.tau_abs, 0) << " and >= " << fixed(s.params.massive.tau_rel, 0)
      << " x median), else the 3 strongest tokens\n";
  char line[256];
  std::snprintf(line, sizeof line, "%6s %9s %6s %10s %8s %9s %8s %s\n", "layer", "median",
                "token", "max|h|", "channel", "x median", "massive", "Super Expert token of");
  out << line;
  constexpr size_t kShown = 8;
  for (const ResidualLayer& layer : s.residual) {
    for (size_t i = 0; i < layer.tokens.size() && i < kShown; ++i) {
      const ResidualToken& t = layer.tokens[i];
      std::string of;
      for (const SuperExpert& se : s.super_experts)
        if (se.token == t.token && se.layer < layer.layer)
          of += (of.empty() ? "" : ", ") + std::string("(") + std::to_string(se.layer) + ", " +
                std::to_string(se.expert) + ")";
      std::snprintf(line, sizeof line, "%6lld %9.3f %6lld %10.3f %8d %9.1f %8s %s\n",
                    static_cast<long long>(layer.layer), static_cast<double>(layer.median),
                    static_cast<long long>(t.token), static_cast<double>(t.absmax), t.channel,
                    t.ratio, t.massive ? "yes" : "no", of.c_str());
      out << row(line);
    }
    if (layer.tokens.size() > kShown)
      out << "       (+" << layer.tokens.size() - kShown << " more massive tokens)\n";
  }
}

}  // namespace

ExpertStudy run_expert_study(const SafetensorsFile& f, const ExpertStudyParams& params) {
  ExpertStudy s;
  s.path = f.path();
  s.params = params;
  while (has_layer(f, s.layers)) ++s.layers;

  // Pass 1: shapes and the expert count.
  s.tokens = -1;
  int32_t max_id = -1;
  std::vector<std::vector<int32_t>> ids(static_cast<size_t>(s.layers));
  std::vector<uint8_t> moe(static_cast<size_t>(s.layers), 0);
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string name = layer_tensor(l, "experts.ids");
    if (!f.has(name)) continue;
    const Shape shape = routing_shape(f, name, s.tokens);
    s.tokens = shape[0];
    if (s.top_k == 0) s.top_k = shape[1];
    ids[static_cast<size_t>(l)] = f.read_i32(name);
    moe[static_cast<size_t>(l)] = 1;
    for (int32_t e : ids[static_cast<size_t>(l)]) max_id = std::max(max_id, e);
    check_limit(f.path() + ": tensor " + name, "expert id", max_id, kMaxExperts - 1);
    ++s.moe_layers;
  }
  if (s.moe_layers == 0)
    throw Error(f.path() + ": no layers.{i}.experts.ids tensor (not a Mixture-of-Experts " +
                "recording)");
  const std::optional<int64_t> meta = metadata_experts(f);
  s.num_experts_from_metadata = meta.has_value() && *meta > 0;
  // Never-routed experts count as m = 0 in P99.5 (docs/spec.md §5), so the expert count matters;
  // without metadata only ids up to the largest routed one are known.
  s.num_experts = s.num_experts_from_metadata ? *meta : static_cast<int64_t>(max_id) + 1;

  // Pass 2: statistics.
  s.stats.resize(static_cast<size_t>(s.layers));
  for (int64_t l = 0; l < s.layers; ++l) {
    const auto i = static_cast<size_t>(l);
    if (!moe[i]) continue;
    const std::string ids_name = layer_tensor(l, "experts.ids");
    const std::string absmax_name = layer_tensor(l, "experts.down_absmax");
    const std::string argmax_name = layer_tensor(l, "experts.down_argmax");
    const Shape shape = routing_shape(f, ids_name, s.tokens);
    if (routing_shape(f, absmax_name, s.tokens) != shape)
      throw Error(f.path() + ": tensor " + absmax_name + " must have the shape of " + ids_name +
                  " " + shape_string(shape));
    const std::vector<float> absmax = f.read_f32(absmax_name);
    std::vector<int32_t> argmax;
    if (f.has(argmax_name)) {
      if (routing_shape(f, argmax_name, s.tokens) != shape)
        throw Error(f.path() + ": tensor " + argmax_name + " must have the shape of " + ids_name +
                    " " + shape_string(shape));
      argmax = f.read_i32(argmax_name);
      s.has_argmax = true;
    }
    try {
      s.stats[i] = expert_statistics(ids[i], absmax, argmax, shape[0], shape[1], s.num_experts);
    } catch (const Error& e) {
      throw Error(f.path() + ": layer " + std::to_string(l) + ": " + e.what());
    }
  }

  s.super_experts = select_super_experts(s.stats, params.selection);
  // The numbers behind the selection, for the report (the same rule as select_super_experts).
  s.considered_layers = included_layer_count(s.layers, params.selection.include_layers);
  std::vector<double> m;
  for (int64_t l = 0; l < s.considered_layers; ++l)
    for (size_t e = 0; e < s.stats[static_cast<size_t>(l)].size(); ++e) {
      const ExpertStat& st = s.stats[static_cast<size_t>(l)][e];
      m.push_back(static_cast<double>(st.max_abs));
      s.strongest.push_back({0, static_cast<int32_t>(l), static_cast<int32_t>(e), st.max_abs,
                             st.token, st.channel});
    }
  s.considered_values = static_cast<int64_t>(m.size());
  if (!m.empty()) {
    s.p99_5 = percentile_linear(m, params.selection.percentile);
    s.max_all = *std::max_element(m.begin(), m.end());
    s.threshold = std::floor(s.max_all / params.selection.max_divisor);
  }
  std::stable_sort(s.strongest.begin(), s.strongest.end(),
                   [](const SuperExpert& a, const SuperExpert& b) {
                     return a.max_abs > b.max_abs;
                   });
  if (s.strongest.size() > static_cast<size_t>(std::max<int64_t>(params.top, 0)))
    s.strongest.resize(static_cast<size_t>(std::max<int64_t>(params.top, 0)));
  for (size_t i = 0; i < s.strongest.size(); ++i) s.strongest[i].rank = static_cast<int32_t>(i + 1);

  s.planted = planted_experts(f);
  if (s.planted) {
    std::vector<LayerExpert> got;
    for (const SuperExpert& se : s.super_experts) got.emplace_back(se.layer, se.expert);
    s.vs_planted = compare_sets(*s.planted, got);
  }
  s.residual = residual_report(f, s.layers, params.massive);
  return s;
}

std::string expert_study_repro(const ExpertStudy& s) {
  return "kvq experts " + s.path + " --include-layers " +
         fixed(s.params.selection.include_layers, 6) + " --tau-abs " +
         fixed(s.params.massive.tau_abs, 6) + " --tau-rel " + fixed(s.params.massive.tau_rel, 6);
}

void print_expert_study(std::ostream& out, std::ostream* summary, const ExpertStudy& s,
                        const std::string& format) {
  if (format == "json") {
    nlohmann::json list = nlohmann::json::array();
    for (const SuperExpert& se : s.super_experts)
      list.push_back({{"rank", se.rank},
                      {"layer", se.layer},
                      {"expert", se.expert},
                      {"max_abs", se.max_abs},
                      {"token", se.token},
                      {"channel", se.channel}});
    out << list.dump(2) << "\n";
  } else if (format == "csv") {
    out << "rank,layer,expert,max_abs,token,channel\n";
    for (const SuperExpert& se : s.super_experts)
      out << se.rank << "," << se.layer << "," << se.expert << "," << fixed(se.max_abs, 6) << ","
          << se.token << "," << se.channel << "\n";
  } else if (format != "table") {
    throw Error("--format must be table, csv or json (got '" + format + "')");
  }
  if (format != "table") {
    if (summary) {
      print_selection_summary(*summary, s);
      print_residual(*summary, s);
    }
    return;
  }

  out << s.path << ": " << s.layers << " layers (" << s.moe_layers << " MoE), " << s.tokens
      << " tokens, top-" << s.top_k << " routing"
      << (s.has_argmax ? "" : "; no experts.down_argmax: channel -1") << "\n";
  print_selection_summary(out, s);
  char line[256];
  out << "\nSuper Experts (" << s.super_experts.size() << ")\n";
  std::snprintf(line, sizeof line, "%5s %6s %7s %12s %6s %8s\n", "rank", "layer", "expert",
                "max_abs", "token", "channel");
  out << line;
  for (const SuperExpert& se : s.super_experts) {
    std::snprintf(line, sizeof line, "%5d %6d %7d %12.4f %6d %8d\n", se.rank, se.layer, se.expert,
                  static_cast<double>(se.max_abs), se.token, se.channel);
    out << line;
  }
  if (s.super_experts.empty()) out << "(none)\n";
  out << "\nstrongest experts of the considered layers (m = max |down_proj output|)\n";
  std::snprintf(line, sizeof line, "%5s %6s %7s %12s %6s %8s %6s\n", "rank", "layer", "expert",
                "max_abs", "token", "channel", "super");
  out << line;
  for (const SuperExpert& c : s.strongest) {
    const bool super = std::any_of(s.super_experts.begin(), s.super_experts.end(),
                                   [&](const SuperExpert& se) {
                                     return se.layer == c.layer && se.expert == c.expert;
                                   });
    std::snprintf(line, sizeof line, "%5d %6d %7d %12.4f %6d %8d %6s\n", c.rank, c.layer,
                  c.expert, static_cast<double>(c.max_abs), c.token, c.channel,
                  super ? "yes" : "");
    out << row(line);
  }
  out << "\n";
  print_residual(out, s);
}

int64_t store_expert_study(Store& store, const ExpertStudy& s, const std::string& command) {
  const int64_t run = store.begin_run(collect_run_info(s.path, command));
  const std::string stem = std::filesystem::path(s.path).stem().string();
  const auto measure = [](const char* metric, double value, const char* unit) {
    Measurement m;
    m.backend = "ref";
    m.metric = metric;
    m.value = value;
    m.unit = unit;
    return m;
  };
  nlohmann::json selected = nlohmann::json::array();
  for (const SuperExpert& se : s.super_experts) selected.push_back({se.layer, se.expert});
  CaseRecord record;
  record.name = "experts/" + stem + "/selection";
  record.op = "super_experts";
  nlohmann::json params = {{"study", "experts"},
                           {"recording", s.path},
                           {"include_layers", s.params.selection.include_layers},
                           {"considered_layers", s.considered_layers},
                           {"num_experts", s.num_experts},
                           {"super_experts", selected}};
  std::vector<Measurement> ms = {
      measure("super_experts", static_cast<double>(s.super_experts.size()), "count"),
      measure("p99_5", s.p99_5, "abs"), measure("threshold", s.threshold, "abs"),
      measure("max_all", s.max_all, "abs")};
  if (s.planted) {
    nlohmann::json planted = nlohmann::json::array();
    for (const auto& [l, e] : *s.planted) planted.push_back({l, e});
    params["planted"] = planted;
    ms.push_back(measure("planted_precision", s.vs_planted->precision, "ratio"));
    ms.push_back(measure("planted_recall", s.vs_planted->recall, "ratio"));
  }
  record.params_json = params.dump();
  record.repro = expert_study_repro(s);
  store.add_case(run, record, {}, ms);
  for (const SuperExpert& se : s.super_experts) {
    CaseRecord r;
    r.name =
        "experts/" + stem + "/L" + std::to_string(se.layer) + "E" + std::to_string(se.expert);
    r.op = "super_experts";
    r.params_json = nlohmann::json{{"study", "experts"},  {"recording", s.path},
                                   {"rank", se.rank},     {"layer", se.layer},
                                   {"expert", se.expert}, {"token", se.token},
                                   {"channel", se.channel}}
                        .dump();
    r.repro = record.repro;
    store.add_case(run, r, {}, {measure("max_abs", se.max_abs, "abs")});
  }
  store.finish_run(run, "complete");
  return run;
}

}  // namespace kvq


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
  const ExpertsCase& k = case_keys<ExpertsCase>(c);
  ExpertStudyParams p;
  p.selection.include_layers = k.include_layers;
  p.massive.tau_abs = static_cast<float>(k.tau_abs);
  p.massive.tau_rel = static_cast<float>(k.tau_rel);
  const std::string path = case_recording(c, k);
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
