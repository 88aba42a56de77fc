#include "harness/studies/pruning.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <span>

#include "harness/recording/case_recording.h"
#include "reference/error.h"
#include "reference/tensor.h"

namespace kvq {
namespace {

const Tensor& find_tensor(const SynthRecording& rec, const std::string& name) {
  for (const auto& [n, t] : rec.tensors)
    if (n == name) return t;
  throw Error("expert_pruning: synthetic recording lacks '" + name + "'");
}

std::span<const float> f32(const SynthRecording& rec, const std::string& name) {
  const Tensor& t = find_tensor(rec, name);
  if (t.dtype != DType::F32) throw Error("expert_pruning: '" + name + "' is not F32");
  return {t.data<float>(), static_cast<size_t>(t.numel())};
}

std::string layer_name(int64_t l, const char* what) {
  return "layers." + std::to_string(l) + "." + what;
}

// Every activation tensor of `a` equals `b`'s bit for bit (the expert tensors are left out:
// pruning changes them by definition).
bool activations_equal(const SynthRecording& a, const SynthRecording& b, int64_t layers) {
  for (int64_t l = 0; l < layers; ++l)
    for (const char* what : {"q", "k", "k_pre_rope", "v", "hidden_in"}) {
      const Tensor& x = find_tensor(a, layer_name(l, what));
      const Tensor& y = find_tensor(b, layer_name(l, what));
      if (x.shape != y.shape || x.bytes.size() != y.bytes.size() ||
          std::memcmp(x.bytes.data(), y.bytes.data(), x.bytes.size()) != 0)
        return false;
    }
  return true;
}

// The control: an ordinary expert that processes sink token 0 in the first Super Expert's
// layer (it sees the same massive token as the Super Expert), else the next non-SE id.
std::pair<int64_t, int64_t> control_expert(const SynthRecording& rec, const SynthParams& p) {
  const auto& se = rec.truth.super_experts;
  const int64_t layer = se.front().first;
  const auto is_se = [&](int64_t e) {
    return std::find(se.begin(), se.end(), std::make_pair(layer, e)) != se.end();
  };
  const Tensor& ids = find_tensor(rec, layer_name(layer, "experts.ids"));
  for (int64_t s = 0; s < p.top_k; ++s)
    if (const int64_t e = ids.data<int32_t>()[s]; !is_se(e)) return {layer, e};
  for (int64_t i = 1; i < p.experts; ++i)
    if (const int64_t e = (se.front().second + i) % p.experts; !is_se(e)) return {layer, e};
  throw Error("expert_pruning: every expert of layer " + std::to_string(layer) +
              " is a Super Expert; no control expert");
}

}  // namespace

PruningState measure_pruning_state(const SynthRecording& rec, const PruningParams& params) {
  const SynthParams& p = params.synth;
  PruningState out;
  std::vector<std::span<const float>> q_layers, k_layers;
  for (int64_t l = 0; l < p.layers; ++l) {
    const std::span<const float> h = f32(rec, layer_name(l, "hidden_in"));
    LayerMassive lm;
    lm.layer = l;
    lm.massive = massive_tokens(h, p.tokens, p.hidden, params.massive);
    const TokenAbsmax a = token_absmax(h, p.tokens, p.hidden);
    const auto top = std::max_element(a.absmax.begin(), a.absmax.end());
    lm.max_absmax = *top;
    lm.max_token = static_cast<int32_t>(top - a.absmax.begin());
    const float median = median_floor(a.absmax);
    lm.max_ratio = median > 0.0f ? static_cast<double>(lm.max_absmax) / median : 0.0;
    out.massive += static_cast<int64_t>(lm.massive.size());
    out.max_ratio = std::max(out.max_ratio, lm.max_ratio);
    out.layers.push_back(std::move(lm));
    q_layers.push_back(f32(rec, layer_name(l, "q")));
    k_layers.push_back(f32(rec, layer_name(l, "k")));
  }
  const SinkScores scores = sink_ground_truth(q_layers, k_layers, p.tokens, p.heads, p.kv_heads,
                                              p.head_dim, params.scores);
  out.sinks = static_cast<int64_t>(scores.sinks.size());
  for (int64_t t : rec.truth.sink_tokens) {
    if (t >= static_cast<int64_t>(scores.score.size()))
      throw Error("expert_pruning: planted sink " + std::to_string(t) +
                  " is beyond the scored range");
    out.sink_scores.push_back(scores.score[static_cast<size_t>(t)]);
  }
  double sum = 0.0;
  for (double s : out.sink_scores) sum += s;  // planted order
  if (!out.sink_scores.empty()) out.sink_mass = sum / static_cast<double>(out.sink_scores.size());
  return out;
}

PruningResult run_pruning(const PruningParams& params, const std::string& target) {
  SynthParams base = params.synth;
  base.pruned_experts.clear();
  if (base.experts < 1) throw Error("expert_pruning: needs a MoE synthetic model (experts >= 1)");
  const SynthRecording before = synthesize(base);
  const auto& se = before.truth.super_experts;
  if (se.empty())
    throw Error("expert_pruning: the synthetic model has no planted Super Expert (experts " +
                std::to_string(base.experts) + ", layers " + std::to_string(base.layers) + ")");

  PruningResult out;
  out.target = target;
  if (target == "all_se") {
    out.experts = se;
  } else if (target == "control") {
    out.experts = {control_expert(before, base)};
  } else if (target.size() > 2 && target.compare(0, 2, "se") == 0 &&
             std::all_of(target.begin() + 2, target.end(), [](char ch) {
               return ch >= '0' && ch <= '9';
             }) &&
             target.size() < 8) {
    const int64_t rank = std::stoll(target.substr(2));
    if (rank < 1 || rank > static_cast<int64_t>(se.size()))
      throw Error("expert_pruning: prune '" + target + "': the model has " +
                  std::to_string(se.size()) + " planted Super Experts (se1..se" +
                  std::to_string(se.size()) + ")");
    out.experts = {se[static_cast<size_t>(rank - 1)]};
  } else {
    throw Error("expert_pruning: prune '" + target +
                "' is not se<N>, all_se or control");
  }
  out.super_expert = std::all_of(out.experts.begin(), out.experts.end(), [&](const auto& x) {
    return std::find(se.begin(), se.end(), x) != se.end();
  });

  SynthParams pruned = base;
  pruned.pruned_experts = out.experts;
  const SynthRecording after = synthesize(pruned);
  out.before = measure_pruning_state(before, params);
  out.after = measure_pruning_state(after, params);
  out.activations_identical = activations_equal(before, after, base.layers);
  return out;
}

StudyOutcome pruning_study_case(const ScenarioCase& c) {
  if (c.input != "synthetic")
    throw Error(c.where + ": expert_pruning regenerates the synthetic MoE; input must be "
                "\"synthetic\", not '" + c.input + "'");
  const PruningCase& k = case_keys<PruningCase>(c);
  PruningParams params;
  params.synth = case_synth_params(k);
  params.massive.tau_abs = static_cast<float>(k.tau_abs);
  params.massive.tau_rel = static_cast<float>(k.tau_rel);
  params.scores.tau_mass = k.tau_mass;
  const PruningResult r = run_pruning(params, k.prune);

  StudyOutcome out;
  auto add = [&](const std::string& metric, double value, const std::string& unit) {
    out.measurements.push_back({"ref", metric, value, unit, 1, 0.0});
  };
  add("massive_before", static_cast<double>(r.before.massive), "count");
  add("massive_after", static_cast<double>(r.after.massive), "count");
  add("max_ratio_before", r.before.max_ratio, "ratio");
  add("max_ratio_after", r.after.max_ratio, "ratio");
  add("sink_mass_before", r.before.sink_mass, "ratio");
  add("sink_mass_after", r.after.sink_mass, "ratio");
  add("sinks_before", static_cast<double>(r.before.sinks), "count");
  add("sinks_after", static_cast<double>(r.after.sinks), "count");
  add("activations_identical", r.activations_identical ? 1.0 : 0.0, "bool");
  for (size_t l = 0; l < r.before.layers.size(); ++l) {
    const std::string suffix = "_L" + std::to_string(l);
    add("massive_before" + suffix, static_cast<double>(r.before.layers[l].massive.size()), "count");
    add("massive_after" + suffix, static_cast<double>(r.after.layers[l].massive.size()), "count");
    add("max_ratio_before" + suffix, r.before.layers[l].max_ratio, "ratio");
    add("max_ratio_after" + suffix, r.after.layers[l].max_ratio, "ratio");
  }
  std::string experts;
  for (const auto& [l, e] : r.experts)
    experts += (experts.empty() ? "" : ",") + ("L" + std::to_string(l) + "E" + std::to_string(e));
  char line[256];
  std::snprintf(line, sizeof line,
                "pruned %s (%s): massive %lld -> %lld, max ratio %.1f -> %.1f, sink mass %.2f -> "
                "%.2f, sinks %lld -> %lld",
                experts.c_str(), r.super_expert ? "super expert" : "control",
                static_cast<long long>(r.before.massive), static_cast<long long>(r.after.massive),
                r.before.max_ratio, r.after.max_ratio, r.before.sink_mass, r.after.sink_mass,
                static_cast<long long>(r.before.sinks), static_cast<long long>(r.after.sinks));
  out.note = line;
  return out;
}

}  // namespace kvq
