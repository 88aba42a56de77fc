#include "harness/studies/memory.h"

#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "harness/io/safetensors.h"
#include "harness/recording/case_recording.h"
#include "harness/recording/synth.h"
#include "harness/studies/method.h"
#include "reference/error.h"

namespace kvq {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Quantized bits, quantized rows, kept bits and kept rows of K and V summed over the layers.
struct Totals {
  double quant_bits[2] = {0, 0}, quant_rows[2] = {0, 0}, kept_bits[2] = {0, 0},
         kept_rows[2] = {0, 0};
  int64_t bits = 0, elements = 0;
};

Totals apply_all(const RecordingLayers& rec, const MethodParams& params) {
  const Calibration calibration = calibrate(rec.layers, params);
  Totals t;
  const auto L = static_cast<int64_t>(rec.layers.size());
  for (int64_t l = 0; l < L; ++l) {
    const LayerTensors& layer = rec.layers[static_cast<size_t>(l)];
    const AppliedLayer a = apply_method(layer, l, L, calibration, params);
    const AppliedTensor* x[2] = {&a.k, &a.v};
    for (int i = 0; i < 2; ++i) {
      const StorageBits& s = x[i]->storage;
      // fp32 keeps no rows: every row is a "quantized" row at 32 bits per element.
      t.kept_bits[i] += static_cast<double>(s.kept);
      t.kept_rows[i] += static_cast<double>(x[i]->kept.size());
      t.quant_bits[i] += static_cast<double>(s.total() - s.kept);
      t.quant_rows[i] += static_cast<double>(layer.shape.tokens) -
                         static_cast<double>(x[i]->kept.size());
      t.bits += s.total();
      t.elements += s.elements;
    }
  }
  return t;
}

std::string fmt(const char* format, double a, double b) {
  char line[96];
  std::snprintf(line, sizeof line, format, a, b);
  return line;
}

}  // namespace

double MethodStorage::layer_bits(int64_t n) const {
  double bits = 0.0;
  for (int i = 0; i < 2; ++i)
    bits += kept_bits[i] + (static_cast<double>(n) - kept_rows[i]) * quantized_row_bits[i];
  return bits;
}

MethodStorage measure_storage(const RecordingLayers& rec, const MethodParams& params) {
  if (rec.layers.empty()) throw Error(rec.source + ": memory: no layers");
  const Totals full = apply_all(rec, params);
  const auto L = static_cast<double>(rec.layers.size());
  MethodStorage out;
  out.method = params.method;
  out.tokens = rec.tokens();
  out.channels = rec.layers.front().shape.channels();
  out.recording_bits_per_element =
      static_cast<double>(full.bits) / static_cast<double>(full.elements);
  for (int i = 0; i < 2; ++i) {
    if (full.quant_rows[i] <= 0.0)
      throw Error(rec.source + ": memory: " + method_name(params.method) + " quantizes no " +
                  (i == 0 ? "K" : "V") + " row of the " + std::to_string(out.tokens) +
                  " recorded tokens (every row kept); record more tokens");
    out.quantized_row_bits[i] = full.quant_bits[i] / full.quant_rows[i];
    out.kept_bits[i] = full.kept_bits[i] / L;
    out.kept_rows[i] = full.kept_rows[i] / L;
  }
  return out;
}

MemoryResult memory_at_context(const MethodStorage& storage, const MemoryModel& model,
                               int64_t context, int64_t batch) {
  if (model.layers < 1 || model.kv_heads < 1 || model.head_dim < 1)
    throw Error("memory: model layers, heads and head_dim must be >= 1");
  if (storage.channels != model.kv_heads * model.head_dim)
    throw Error("memory: the recording has " + std::to_string(storage.channels) +
                " KV channels per layer, the model " + std::to_string(model.kv_heads) + " x " +
                std::to_string(model.head_dim));
  if (context < 1) throw Error("memory: context must be >= 1");
  for (int i = 0; i < 2; ++i)
    if (static_cast<double>(context) < storage.kept_rows[i])
      throw Error("memory: context " + std::to_string(context) + " is shorter than the " +
                  std::to_string(static_cast<int64_t>(storage.kept_rows[i])) +
                  " rows the method keeps in fp16");
  if (!(model.weights_gib >= 0.0) || !(model.budget_gib > model.weights_gib))
    throw Error(fmt("memory: budget %.2f GiB leaves nothing after weights %.2f GiB",
                    model.budget_gib, model.weights_gib));
  MemoryResult r;
  r.context = context;
  const double n = static_cast<double>(context), L = static_cast<double>(model.layers);
  const double kv_bytes = L * storage.layer_bits(context) / 8.0;  // one sequence
  const double fp16_bytes = L * 2.0 * n * static_cast<double>(storage.channels) * 2.0;
  r.bytes_per_token = kv_bytes / n;
  r.fp16_bytes_per_token = fp16_bytes / n;
  r.bits_per_element = kv_bytes * 8.0 / (L * 2.0 * n * static_cast<double>(storage.channels));
  const double available = (model.budget_gib - model.weights_gib) * kGiB;
  r.max_batch = static_cast<int64_t>(std::floor(available / kv_bytes));
  r.fp16_max_batch = static_cast<int64_t>(std::floor(available / fp16_bytes));
  r.batch = batch > 0 ? batch : std::max<int64_t>(1, r.fp16_max_batch);
  const double weights = model.weights_gib * kGiB, b = static_cast<double>(r.batch);
  r.memory_ratio = (weights + b * fp16_bytes) / (weights + b * kv_bytes);
  r.kv_ratio = fp16_bytes / kv_bytes;
  return r;
}

PaperClaim paper_claim(Method method) {
  // RotateKV (arXiv 2501.16383) abstract: 3.97x lower peak memory, 5.75x larger batch on
  // LLaMA-2-13B; AKVQ-VL (arXiv 2501.15021) abstract: 2.13x, 3.25x.
  if (method == Method::RotateKv) return {3.97, 5.75};
  if (method == Method::AkvqVl) return {2.13, 3.25};
  return {};
}

StudyOutcome memory_study_case(const ScenarioCase& c) {
  const MemoryCase& k = case_keys<MemoryCase>(c);
  const MethodParams params = method_params(k);
  MemoryModel model;
  model.layers = k.layers;
  model.kv_heads = k.heads.value_or(model.kv_heads);
  model.head_dim = k.head_dim.value_or(model.head_dim);
  model.budget_gib = k.budget_gib;
  model.weights_gib = k.weights_gib;

  // The measuring recording: synthetic at the model's KV shape (4 layers: SynthParams' default,
  // half TSA and half PSA for akvq-vl as in any even-layered model), or the case's recording.
  // One process measures each (recording, method) once; the cases of a context sweep share it.
  static std::map<std::string, MethodStorage> measured;
  static std::pair<std::string, std::shared_ptr<RecordingLayers>> loaded;
  nlohmann::json id = {{"method", method_name(params.method)},  {"bits", params.bits},
                       {"group", params.group},    {"window", params.window}};
  std::string source;
  SynthParams sp;
  if (c.input == "synthetic") {
    sp.seed = static_cast<uint64_t>(k.seed);
    sp.tokens = k.tokens;
    sp.kv_heads = model.kv_heads;
    sp.heads = k.q_heads.value_or(model.kv_heads);
    sp.head_dim = model.head_dim;
    sp.hidden = k.hidden;
    sp.experts = 0;  // methods read no expert tensors
    source = nlohmann::json({{"synthetic", {sp.seed, sp.tokens, sp.kv_heads, sp.heads,
                                            sp.head_dim, sp.hidden}}})
                 .dump();
  } else {
    source = c.input;  // a recording path (memory reads no model: input = "model" is refused)
  }
  const std::string key = source + id.dump();
  auto it = measured.find(key);
  if (it == measured.end()) {
    if (loaded.first != source || !loaded.second) {
      loaded.second.reset();
      if (c.input == "synthetic") {
        loaded.second = std::make_shared<RecordingLayers>(load_recording_layers(synthesize(sp)));
      } else {
        const SafetensorsFile file = SafetensorsFile::open(source);
        loaded.second = std::make_shared<RecordingLayers>(load_recording_layers(file));
      }
      loaded.first = source;
    }
    it = measured.emplace(key, measure_storage(*loaded.second, params)).first;
  }
  if (c.input != "synthetic" && !k.heads && !k.head_dim) {
    model.kv_heads = 1;  // a recording and no model shape: the recording's channels (as one head)
    model.head_dim = it->second.channels;
  }
  const MethodStorage& storage = it->second;
  const MemoryResult r =
      memory_at_context(storage, model, k.context, k.batch);

  StudyOutcome out;
  auto add = [&](const std::string& metric, double value, const std::string& unit) {
    out.measurements.push_back({"ref", metric, value, unit, 1, 0.0});
  };
  add("bytes_per_token", r.bytes_per_token, "bytes");
  add("fp16_bytes_per_token", r.fp16_bytes_per_token, "bytes");
  add("bits_per_element", r.bits_per_element, "bits");
  add("recording_bits_per_element", storage.recording_bits_per_element, "bits");
  add("max_batch", static_cast<double>(r.max_batch), "count");
  add("fp16_max_batch", static_cast<double>(r.fp16_max_batch), "count");
  if (r.fp16_max_batch > 0)
    add("batch_ratio",
        static_cast<double>(r.max_batch) / static_cast<double>(r.fp16_max_batch), "ratio");
  add("memory_ratio", r.memory_ratio, "ratio");
  add("kv_ratio", r.kv_ratio, "ratio");
  const PaperClaim claim = paper_claim(params.method);
  if (claim.memory_ratio > 0.0) {
    add("paper_memory_ratio", claim.memory_ratio, "ratio");
    add("paper_batch_ratio", claim.batch_ratio, "ratio");
  }
  out.details = {{"kept_rows_k", storage.kept_rows[0]},
                 {"kept_rows_v", storage.kept_rows[1]},
                 {"quantized_row_bits_k", storage.quantized_row_bits[0]},
                 {"quantized_row_bits_v", storage.quantized_row_bits[1]},
                 {"measured_tokens", storage.tokens},
                 {"batch", r.batch}};
  char line[320];
  std::snprintf(line, sizeof line,
                "%s: %.1f B/token (fp16 %.0f), %.3f bits/elem at %lld tokens; batch %lld vs fp16 "
                "%lld; peak memory %.2fx at batch %lld (weights %.1f GiB included)%s",
                method_name(params.method), r.bytes_per_token, r.fp16_bytes_per_token,
                r.bits_per_element, static_cast<long long>(r.context),
                static_cast<long long>(r.max_batch), static_cast<long long>(r.fp16_max_batch),
                r.memory_ratio, static_cast<long long>(r.batch), model.weights_gib,
                claim.memory_ratio > 0.0
                    ? fmt("; paper: %.2fx memory, %.2fx batch", claim.memory_ratio,
                          claim.batch_ratio)
                          .c_str()
                    : "");
  out.note = line;
  return out;
}

}  // namespace kvq
