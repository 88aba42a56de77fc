#include "harness/studies/method.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "harness/io/safetensors.h"
#include "harness/model/kv_cache.h"
#include "harness/model/llama2.h"
#include "harness/model/perplexity.h"
#include "harness/model/tokenizer.h"
#include "harness/recording/case_recording.h"
#include "harness/recording/recording_layers.h"
#include "harness/recording/synth.h"
#include "reference/attention.h"
#include "reference/error.h"
#include "reference/methods.h"
#include "verify/metrics.h"

namespace kvq {

MethodParams method_params(const MethodKeys& k) {
  MethodParams params;
  params.method = parse_method(k.method);
  params.bits = static_cast<int>(k.bits);
  params.group = k.group;
  params.window = k.window;
  params.clip = static_cast<float>(k.clip);  // -1 unless given: the method's
  params.zero_point = k.zero_point == "int" ? ZeroPoint::Int : ZeroPoint::Float;
  params.head_group = static_cast<int>(k.head_group);
  // The knobs of docs/readme-studies.md's equal-bits study and ablations.
  params.outlier_fraction = k.outlier_fraction;
  params.first_tokens = k.first_tokens;
  params.pivot.top_k = k.pivots;
  params.reorder = k.reorder;
  const MassiveRule rule = parse_massive_rule(k.massive_rule);
  params.pivot.massive.rule = params.kvsink.massive.rule = rule;
  return params;
}

namespace {

// Sums of squared errors and references in fp64, storage bits, the worst attention error and
// the sum of per-layer score KLs.
struct MethodMetrics {
  double k_err = 0, k_ref = 0, v_err = 0, v_ref = 0;
  int64_t bits = 0, elements = 0;
  double attention_rel_error = 0.0;
  double attention_err2 = 0.0, attention_ref2 = 0.0;  // pooled over layers
  double kl_sum = 0.0;
};


// docs/spec.md §9 perplexity inputs, loaded once per (model, tokenizer, text) in the process.
struct PplSource {
  std::shared_ptr<const Model> model;
  std::vector<int32_t> ids;  // the whole text, encoded once
};

const PplSource& ppl_source(const std::string& model_path, const std::string& tokenizer_path,
                            const std::string& text_path) {
  static std::map<std::string, PplSource> sources;
  const std::string key = model_path + "\n" + tokenizer_path + "\n" + text_path;
  if (auto it = sources.find(key); it != sources.end()) return it->second;
  auto model = std::make_shared<const Model>(Model::load(model_path));
  const Tokenizer tokenizer = Tokenizer::load(tokenizer_path);
  require_matching_tokenizer(*model, tokenizer);
  PplSource source{model, tokenizer.encode(read_text_file(text_path))};
  if (source.ids.empty()) throw Error(text_path + " gives no tokens");
  return sources[key] = std::move(source);
}

// ppl and ppl_fp32 (docs/spec.md §9, as harness/model/perplexity.h and `kvq ppl` run it): the
// text's
// first `ppl_tokens` ids (default all) in chunks of BOS + ppl_window - 1 (default W = 256), the
// method's calibration on the fp32 activations of the first chunk. The fp32 baseline is computed
// once per (model, tokenizer, text, ppl_tokens, ppl_window) in the process.
// ppl, ppl_fp32 and the bits per element of the cache the perplexity ran with (every chunk's K
// and V of every layer; it differs from the recording's bits_per_element where a method keeps a
// share of tokens that depends on the length, as KIVI's window R does).
struct CasePpl {
  double ppl = 0.0, ppl_fp32 = 0.0, bits_per_element = 32.0;
};
CasePpl case_perplexity(const ScenarioCase& c, const MethodParams& params) {
  const MethodCase& k = case_keys<MethodCase>(c);
  for (const auto& [key, given] : {std::pair{"tokenizer", k.tokenizer}, std::pair{"text", k.text}})
    if (!given)
      throw Error(c.where + ": key '" + key + "': perplexity (key 'model') needs model, " +
                  "tokenizer and text");
  const std::string model_path = *k.model, tokenizer_path = *k.tokenizer, text_path = *k.text;
  const int64_t max_tokens = k.ppl_tokens.value_or(-1);
  const int64_t window = k.ppl_window;
  if (max_tokens == 0)
    throw Error(c.where + ": key 'ppl_tokens': must be positive (omit it for the whole text)");
  const PplSource& source = ppl_source(model_path, tokenizer_path, text_path);
  std::vector<int32_t> ids = source.ids;
  if (max_tokens > 0 && static_cast<int64_t>(ids.size()) > max_tokens)
    ids.resize(static_cast<size_t>(max_tokens));
  const auto chunks = ppl_chunks(ids, window);  // throws for window < 2
  const Model& model = *source.model;
  const ModelConfig& config = model.config();

  static std::map<std::string, double> baselines;
  const std::string key = model_path + "\n" + tokenizer_path + "\n" + text_path + "\n" +
                          std::to_string(max_tokens) + "\n" + std::to_string(window);
  auto base = baselines.find(key);
  if (base == baselines.end()) {
    const PplResult fp32 =
        perplexity(model, chunks, [&] { return std::make_unique<Fp32KvCache>(config.n_layers); });
    base = baselines.emplace(key, fp32.ppl()).first;
  }
  if (params.method == Method::Fp32) return {base->second, base->second, 32.0};
  const Calibration calibration = calibrate_for_ppl(model, chunks.front(), params);
  const PplResult got =
      perplexity(model, chunks, [&] { return make_method_cache(config, params, calibration); });
  return {got.ppl(), base->second, got.bits_per_element()};
}

std::string number(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3g", v);
  return text;
}

}  // namespace

double attention_score_kl(std::span<const float> q, int64_t q_heads, const KvShape& shape,
                          std::span<const float> k_exact, std::span<const float> k_method) {
  const int64_t T = shape.tokens, d = shape.head_dim, C = shape.channels();
  if (q_heads < 1 || shape.heads < 1 || q_heads % shape.heads != 0 || T < 1 || d < 1)
    throw Error("score_kl: q_heads " + std::to_string(q_heads) + " must be a positive multiple " +
                "of the KV heads " + std::to_string(shape.heads) + ", with T, d >= 1");
  if (static_cast<int64_t>(q.size()) != q_heads * d ||
      static_cast<int64_t>(k_exact.size()) != T * C ||
      static_cast<int64_t>(k_method.size()) != T * C)
    throw Error("score_kl: sizes differ from q [" + std::to_string(q_heads) + ", " +
                std::to_string(d) + "] and k [" + std::to_string(T) + ", " + std::to_string(C) +
                "]");
  const int64_t per_kv = q_heads / shape.heads;
  const double root_d = std::sqrt(static_cast<double>(d));
  // log-softmax of one head's scores over the T keys, fp64, max-subtracted.
  const auto log_probs = [&](std::span<const float> k, int64_t h) {
    const int64_t g = h / per_kv;
    std::vector<double> s(static_cast<size_t>(T));
    for (int64_t j = 0; j < T; ++j) {
      double dot = 0.0;
      for (int64_t c = 0; c < d; ++c)
        dot += static_cast<double>(q[static_cast<size_t>(h * d + c)]) *
               static_cast<double>(k[static_cast<size_t>(j * C + g * d + c)]);
      s[static_cast<size_t>(j)] = dot / root_d;
    }
    const double m = *std::max_element(s.begin(), s.end());
    double z = 0.0;
    for (double v : s) z += std::exp(v - m);
    const double lse = m + std::log(z);
    for (double& v : s) v -= lse;
    return s;
  };
  double sum = 0.0;
  for (int64_t h = 0; h < q_heads; ++h) {
    const std::vector<double> lp = log_probs(k_exact, h), lq = log_probs(k_method, h);
    double kl = 0.0;
    for (int64_t j = 0; j < T; ++j) {
      const double p = std::exp(lp[static_cast<size_t>(j)]);
      if (p > 0.0) kl += p * (lp[static_cast<size_t>(j)] - lq[static_cast<size_t>(j)]);
    }
    sum += kl;
  }
  return sum / static_cast<double>(q_heads);
}

namespace {

SynthParams synth_without_experts(const RecordingKeys& k) {
  SynthParams p = case_synth_params(k);
  p.experts = 0;
  return p;
}

}  // namespace

StudyOutcome method_study(const ScenarioCase& c) {
  // Synthetic input is synthesized in memory (cheaper than the cache file: methods read no
  // expert tensors).
  const MethodCase& k = case_keys<MethodCase>(c);
  const RecordingLayers rec =
      c.input == "synthetic" ? load_recording_layers(synthesize(synth_without_experts(k)))
                             : load_recording_layers(SafetensorsFile::open(case_recording(c, k)));
  const std::vector<LayerTensors>& tensors = rec.layers;
  const auto layers = static_cast<int64_t>(tensors.size());
  MethodParams params = method_params(k);
  params.rope_theta = recording_rope_theta(rec, params.rope_theta);

  const auto start = std::chrono::steady_clock::now();
  const Calibration calibration = calibrate(tensors, params);
  MethodMetrics m;
  for (int64_t l = 0; l < layers; ++l) {
    const LayerTensors& t = tensors[static_cast<size_t>(l)];
    const AppliedLayer applied = apply_method(t, l, layers, calibration, params);
    for (size_t i = 0; i < applied.k.dequant.size(); ++i) {
      m.k_err += std::pow(static_cast<double>(applied.k.dequant[i]) - t.k[i], 2);
      m.k_ref += std::pow(static_cast<double>(t.k[i]), 2);
      m.v_err += std::pow(static_cast<double>(applied.v.dequant[i]) - t.v[i], 2);
      m.v_ref += std::pow(static_cast<double>(t.v[i]), 2);
    }
    m.bits += applied.k.storage.total() + applied.v.storage.total();
    m.elements += applied.k.storage.elements + applied.v.storage.elements;
    // docs/spec.md §7/§8: the newest token's query over the method's cache vs the fp32 cache, both
    // with the fp64 oracle so the difference is the method's alone.
    const size_t row = static_cast<size_t>(t.q_heads * t.shape.head_dim);
    const std::span<const float> q = t.q.subspan(t.q.size() - row, row);
    DecodeCache exact;
    exact.shape = t.shape;
    exact.k_f32.assign(t.k.begin(), t.k.end());
    exact.v_f32.assign(t.v.begin(), t.v.end());
    const std::vector<double> want = attention_decode_oracle(q, t.q_heads, exact);
    const std::vector<double> got = attention_decode_oracle(q, t.q_heads, applied.cache);
    m.attention_rel_error = std::max(m.attention_rel_error, max_relative_error(want, got));
    for (size_t i = 0; i < want.size(); ++i) {
      m.attention_err2 += (got[i] - want[i]) * (got[i] - want[i]);
      m.attention_ref2 += want[i] * want[i];
    }
    // score_kl over the keys attention reads (the cache's reconstruction, docs/spec.md §7).
    m.kl_sum += attention_score_kl(q, t.q_heads, t.shape, t.k, reconstruct_keys(applied.cache));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double kv = m.k_ref + m.v_ref > 0 ? (m.k_err + m.v_err) / (m.k_ref + m.v_ref) : 0.0;
  const double bits =
      m.elements ? static_cast<double>(m.bits) / static_cast<double>(m.elements) : 0.0;
  const double kl = layers ? m.kl_sum / static_cast<double>(layers) : 0.0;
  const double attention_l2 =
      m.attention_ref2 > 0 ? std::sqrt(m.attention_err2 / m.attention_ref2) : 0.0;
  StudyOutcome out;
  out.measurements = {{"ref", "kv_nmse", kv, "ratio", 1, 0.0},
                      {"ref", "k_nmse", m.k_ref > 0 ? m.k_err / m.k_ref : 0.0, "ratio", 1, 0.0},
                      {"ref", "v_nmse", m.v_ref > 0 ? m.v_err / m.v_ref : 0.0, "ratio", 1, 0.0},
                      {"ref", "attention_rel_error", m.attention_rel_error, "ratio", 1, 0.0},
                      {"ref", "attention_rel_l2", attention_l2, "ratio", 1, 0.0},
                      {"ref", "bits_per_element", bits, "bits", 1, 0.0},
                      {"ref", "time", seconds, "s", 1, 0.0},
                      {"ref", "score_kl", kl, "nats", 1, 0.0}};
  out.note = "kv_nmse " + number(kv) + ", attention " + number(m.attention_rel_error) + ", kl " +
             number(kl) + ", bits/elem " + number(bits);
  if (k.model) {
    const auto [ppl, ppl_fp32, ppl_bits] = case_perplexity(c, params);
    out.measurements.push_back({"ref", "ppl", ppl, "", 1, 0.0});
    out.measurements.push_back({"ref", "ppl_fp32", ppl_fp32, "", 1, 0.0});
    out.measurements.push_back({"ref", "ppl_bits_per_element", ppl_bits, "bits", 1, 0.0});
    out.note += ", ppl " + number(ppl) + " (fp32 " + number(ppl_fp32) + ")";
  }
  return out;
}

}  // namespace kvq
