#include "harness/runner.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <regex>

#include "backends/backend.h"
#include "harness/op_inputs.h"
#include "harness/safetensors.h"
#include "harness/store.h"
#include "harness/synth.h"
#include "reference/error.h"
#include "reference/half.h"
#include "reference/methods.h"
#include "verify/compare.h"
#include "verify/metrics.h"

namespace kvq {

namespace {

// One case's input, synthetic or read from a recording.
struct CaseInput {
  KvShape shape;             // [T, H, d]; 2-D tensors are [T, 1, D]
  std::vector<float> x;      // [T, H * d]
  std::vector<uint16_t> x16; // fp16 copy when dtype = f16 (rotate_quantize)
};

// What one backend produced for a case; which fields are set depends on the op.
struct OpOutput {
  std::vector<float> values;
  std::vector<int32_t> indices;
  std::optional<Quantized> quantized;
  double seconds = 0.0;
};

Op op_from_name(const std::string& name) {
  for (int i = 0; i <= static_cast<int>(Op::AttentionDecode); ++i)
    if (name == op_name(static_cast<Op>(i))) return static_cast<Op>(i);
  throw Error("unknown op '" + name + "'");
}

QuantParams quant_params(const ScenarioCase& c) {
  QuantParams p;
  p.bits = static_cast<int>(case_int(c, "bits", 2));
  p.group = case_int(c, "group", 128);
  p.axis = case_string(c, "axis", "token") == "channel" ? Axis::Channel : Axis::Token;
  p.clip = static_cast<float>(case_double(c, "clip", 1.0));
  p.zero_point = case_string(c, "zero_point", "float") == "int" ? ZeroPoint::Int : ZeroPoint::Float;
  return p;
}

CaseInput make_input(const ScenarioCase& c) {
  CaseInput in;
  if (c.input == "synthetic") {
    const std::string op = case_string(c, "op", "");
    in.shape.tokens = case_int(c, "tokens", 128);
    in.shape.heads = op == "fwht" ? 1 : op == "token_absmax" ? 1 : case_int(c, "heads", 8);
    in.shape.head_dim = op == "fwht"           ? case_int(c, "n", 128)
                        : op == "token_absmax" ? case_int(c, "hidden", 256)
                                               : case_int(c, "head_dim", 128);
    in.x = kv_with_outliers(in.shape.tokens, in.shape.heads, in.shape.head_dim,
                            static_cast<uint64_t>(case_int(c, "seed", 1)),
                            case_int(c, "outlier_channels", op == "fwht" ? 0 : 4),
                            case_double(c, "outlier_scale", 30.0));
    if (op == "token_absmax" && in.shape.tokens > 2)  // a planted massive activation
      in.x[static_cast<size_t>(in.shape.head_dim + 3)] = 2000.0f;
  } else {
    const SafetensorsFile file = SafetensorsFile::open(c.input);
    const std::string name = "layers." + std::to_string(case_int(c, "layers", 0)) + "." +
                             case_string(c, "tensor", "k");
    const TensorView view = file.view(name);
    if (view.shape.size() == 3) {
      in.shape = {view.shape[0], view.shape[1], view.shape[2]};
    } else if (view.shape.size() == 2) {
      in.shape = {view.shape[0], 1, view.shape[1]};
    } else {
      throw Error(c.input + ": tensor '" + name + "': expected 2 or 3 dimensions, got " +
                  shape_string(view.shape));
    }
    in.x = file.read_f32(name);
  }
  if (case_string(c, "dtype", "f32") == "f16") {
    in.x16.resize(in.x.size());
    for (size_t i = 0; i < in.x.size(); ++i) {
      in.x16[i] = float_to_half(in.x[i]);
      in.x[i] = half_to_float(in.x16[i]);
    }
  }
  return in;
}

RotationParams rotation_params(const ScenarioCase& c, const CaseInput& in) {
  RotationParams p;
  p.head_group = static_cast<int>(case_int(c, "head_group", 4));
  if (case_bool(c, "reorder", true)) {
    // SPEC.md §2: calibrate on the first half of the tokens (at least one).
    const int64_t calib = std::max<int64_t>(1, in.shape.tokens / 2);
    const std::span<const float> head(in.x.data(), static_cast<size_t>(calib * in.shape.channels()));
    const KvShape calib_shape{calib, in.shape.heads, in.shape.head_dim};
    p.perm = calibrate_permutation(rotate_k(head, calib_shape, RotationParams{p.head_group, {}}),
                                   calib, in.shape.channels());
  }
  return p;
}

// Synthetic MoE routing for expert_statistics.
struct Routing {
  std::vector<int32_t> ids, argmax;
  std::vector<float> absmax;
  int64_t experts = 8, top_k = 2;
};
Routing make_routing(const ScenarioCase& c, int64_t tokens) {
  Routing r;
  r.experts = case_int(c, "experts", 8);
  r.top_k = std::min(case_int(c, "top_k", 2), r.experts);
  SplitMix64 rng(static_cast<uint64_t>(case_int(c, "seed", 1)));
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t first = static_cast<int64_t>(rng.next() % r.experts);
    for (int64_t k = 0; k < r.top_k; ++k) {
      r.ids.push_back(static_cast<int32_t>((first + k) % r.experts));
      r.absmax.push_back(static_cast<float>(std::fabs(rng.normal()) * (first == 1 ? 50 : 1)));
      r.argmax.push_back(static_cast<int32_t>(rng.next() % 256));
    }
  }
  return r;
}

DecodeCache make_cache(const ScenarioCase& c, const CaseInput& in) {
  DecodeCache cache;
  cache.shape = in.shape;
  const QuantParams q = quant_params(c);
  cache.k = quantize(in.x, in.shape.tokens, in.shape.channels(), q, "attention keys");
  std::vector<float> v = kv_with_outliers(in.shape.tokens, in.shape.heads, in.shape.head_dim,
                                          static_cast<uint64_t>(case_int(c, "seed", 1)) + 7, 0, 1);
  cache.v = quantize(v, in.shape.tokens, in.shape.channels(), q, "attention values");
  return cache;
}

std::vector<float> make_query(const ScenarioCase& c, const CaseInput& in) {
  const int64_t q_heads = case_int(c, "q_heads", in.shape.heads);
  return kv_with_outliers(1, q_heads, in.shape.head_dim,
                          static_cast<uint64_t>(case_int(c, "seed", 1)) + 11, 0, 1);
}

OpOutput run_op(const Backend& b, Op op, const ScenarioCase& c, const CaseInput& in) {
  OpOutput out;
  const auto start = std::chrono::steady_clock::now();
  const int64_t rows = in.shape.tokens, cols = in.shape.channels();
  switch (op) {
    case Op::Fwht:
      out.values = in.x;
      b.fwht(out.values, static_cast<int>(in.shape.head_dim));
      break;
    case Op::Reorder: {
      std::vector<int32_t> perm(static_cast<size_t>(cols));
      SplitMix64 rng(static_cast<uint64_t>(case_int(c, "seed", 1)));
      for (int64_t i = 0; i < cols; ++i) perm[i] = static_cast<int32_t>(i);
      for (int64_t i = cols - 1; i > 0; --i) std::swap(perm[i], perm[rng.next() % (i + 1)]);
      out.values = b.reorder(in.x, rows, perm);
      break;
    }
    case Op::RotateK: out.values = b.rotate_k(in.x, in.shape, rotation_params(c, in)); break;
    case Op::RotateV: out.values = b.rotate_v(in.x, in.shape); break;
    case Op::Quantize: out.quantized = b.quantize(in.x, rows, cols, quant_params(c)); break;
    case Op::Dequantize:
      out.values = b.dequantize(kvq::quantize(in.x, rows, cols, quant_params(c)));
      break;
    case Op::RotateQuantize: {
      RotateQuantizeParams p;
      const std::string r = case_string(c, "rotation", "key_grouped");
      p.rotation = r == "none"       ? AppendRotation::None
                   : r == "per_head" ? AppendRotation::PerHead
                                     : AppendRotation::KeyGrouped;
      if (p.rotation == AppendRotation::KeyGrouped) p.rotation_params = rotation_params(c, in);
      p.quant = quant_params(c);
      const TensorView view = in.x16.empty()
                                  ? TensorView{in.x.data(), DType::F32, {rows, in.shape.heads, in.shape.head_dim}}
                                  : TensorView{in.x16.data(), DType::F16, {rows, in.shape.heads, in.shape.head_dim}};
      out.quantized = b.rotate_quantize(view, in.shape, p);
      break;
    }
    case Op::TokenAbsmax: {
      TokenAbsmax t = b.token_absmax(in.x, rows, cols);
      out.values = std::move(t.absmax);
      out.indices = std::move(t.argmax);
      break;
    }
    case Op::ExpertStatistics: {
      const Routing r = make_routing(c, rows);
      for (const ExpertStat& s : b.expert_statistics(r.ids, r.absmax, r.argmax, rows, r.top_k,
                                                     r.experts)) {
        out.values.push_back(s.max_abs);
        out.indices.push_back(s.token);
        out.indices.push_back(s.channel);
      }
      break;
    }
    case Op::AttentionDecode: {
      const std::vector<float> q = make_query(c, in);
      out.values = b.attention_decode(q, case_int(c, "q_heads", in.shape.heads), make_cache(c, in));
      break;
    }
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

Comparison compare_outputs(const OpOutput& expected, const OpOutput& got) {
  if (expected.quantized) {
    if (!got.quantized) {
      Comparison c;
      c.shape_mismatch = true;
      c.where = "quantized";
      return c;
    }
    return compare_quantized(*expected.quantized, *got.quantized);
  }
  Comparison values = compare_bitwise(expected.values, got.values);
  if (values.mismatches || values.shape_mismatch) {
    values.where = "values";
    return values;
  }
  if (!expected.indices.empty() || !got.indices.empty()) {
    Comparison idx = compare_i32(expected.indices, got.indices);
    if (!idx.passed()) {
      idx.where = "indices";
      return idx;
    }
  }
  return values;
}

std::string repro_line(const Scenario& s, const ScenarioCase& c, const std::string& backend) {
  std::string escaped;
  for (char ch : c.name) {
    if (std::string("\\^$.|?*+()[]{}").find(ch) != std::string::npos) escaped += '\\';
    escaped += ch;
  }
  return "kvq run " + s.path + " --filter '^" + escaped + "$' --backends " + backend;
}

void print_line(const std::string& name, const std::string& backend, const std::string& check,
                double max_ulp, double nmse, double seconds) {
  std::printf("%-44s %-8s %-6s %9.3g %10.3g %10.6f\n", name.c_str(), backend.c_str(),
              check.c_str(), max_ulp, nmse, seconds);
}

// op = "method": SPEC.md §8 on a recording or a synthetic one; reference only, measured.
std::vector<Measurement> run_method(const ScenarioCase& c) {
  std::vector<std::pair<std::string, Tensor>> owned;
  std::optional<SafetensorsFile> file;
  std::map<std::string, std::vector<float>> f32;
  std::vector<uint8_t> modality;
  int64_t layers = 0;
  auto tensor = [&](const std::string& name) -> const std::vector<float>& {
    auto it = f32.find(name);
    if (it != f32.end()) return it->second;
    if (file) return f32[name] = file->read_f32(name);
    for (const auto& [n, t] : owned)
      if (n == name) return f32[name] = widen_f32(t.view(), name);
    throw Error("synthetic recording lacks '" + name + "'");
  };
  Shape k_shape, q_shape, h_shape;
  if (c.input == "synthetic") {
    SynthParams p;
    p.seed = static_cast<uint64_t>(case_int(c, "seed", 1));
    p.tokens = case_int(c, "tokens", 256);
    p.head_dim = case_int(c, "head_dim", 32);
    p.experts = 0;
    SynthRecording rec = synthesize(p);
    owned = std::move(rec.tensors);
    layers = p.layers;
    k_shape = {p.tokens, p.kv_heads, p.head_dim};
    q_shape = {p.tokens, p.heads, p.head_dim};
    h_shape = {p.tokens, p.hidden};
    for (const auto& [n, t] : owned)
      if (n == "modality") modality.assign(t.data<uint8_t>(), t.data<uint8_t>() + t.numel());
  } else {
    file.emplace(SafetensorsFile::open(c.input));
    while (file->has("layers." + std::to_string(layers) + ".k")) ++layers;
    if (layers == 0) throw Error(c.input + ": tensor 'layers.0.k' is missing");
    k_shape = file->view("layers.0.k").shape;
    q_shape = file->view("layers.0.q").shape;
    h_shape = file->view("layers.0.hidden_in").shape;
    if (file->has("modality")) {
      const TensorView m = file->view("modality");
      modality.assign(static_cast<const uint8_t*>(m.data),
                      static_cast<const uint8_t*>(m.data) + m.numel());
    }
  }
  std::vector<LayerTensors> tensors;
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    LayerTensors t;
    t.shape = {k_shape[0], k_shape[1], k_shape[2]};
    t.q_heads = q_shape[1];
    t.hidden_size = h_shape[1];
    t.k = tensor(p + "k");
    t.k_pre_rope = tensor(p + "k_pre_rope");
    t.v = tensor(p + "v");
    t.hidden_in = tensor(p + "hidden_in");
    t.q = tensor(p + "q");
    t.modality = modality;
    tensors.push_back(t);
  }
  MethodParams params;
  params.method = parse_method(case_string(c, "method", "rtn"));
  params.bits = static_cast<int>(case_int(c, "bits", 2));
  params.group = case_int(c, "group", 128);
  params.window = case_int(c, "window", -1);
  const Calibration calibration = calibrate(tensors, params);
  double k_err = 0, k_ref = 0, v_err = 0, v_ref = 0;
  int64_t k_bits = 0, v_bits = 0, elements = 0;
  for (int64_t l = 0; l < layers; ++l) {
    const AppliedLayer applied = apply_method(tensors[l], l, layers, calibration, params);
    for (size_t i = 0; i < applied.k.dequant.size(); ++i) {
      k_err += std::pow(static_cast<double>(applied.k.dequant[i]) - tensors[l].k[i], 2);
      k_ref += std::pow(static_cast<double>(tensors[l].k[i]), 2);
      v_err += std::pow(static_cast<double>(applied.v.dequant[i]) - tensors[l].v[i], 2);
      v_ref += std::pow(static_cast<double>(tensors[l].v[i]), 2);
    }
    k_bits += applied.k.storage.total();
    v_bits += applied.v.storage.total();
    elements += applied.k.storage.elements;
  }
  return {{"ref", "k_nmse", k_ref > 0 ? k_err / k_ref : 0.0, "", 1, 0.0},
          {"ref", "v_nmse", v_ref > 0 ? v_err / v_ref : 0.0, "", 1, 0.0},
          {"ref", "bits_per_element",
           elements ? static_cast<double>(k_bits + v_bits) / (2.0 * elements) : 0.0, "bits", 1,
           0.0}};
}

std::vector<std::string> case_backends(const Scenario& s, const ScenarioCase& c,
                                       const RunOptions& o) {
  if (!o.backends.empty()) return o.backends;
  if (!c.backends.empty()) return c.backends;
  if (!s.backends.empty()) return s.backends;
  std::vector<std::string> all;
  for (const BackendEntry& e : backend_registry())
    if (e.available) all.push_back(e.name);
  return all;
}

const BackendEntry* find_backend(const std::string& name) {
  for (const BackendEntry& e : backend_registry())
    if (e.name == name) return &e;
  return nullptr;
}

}  // namespace

RunSummary run_scenario(const Scenario& scenario, const RunOptions& options) {
  for (const std::string& name : options.backends)
    if (!find_backend(name)) (void)make_backend(name);  // throws naming the known backends
  const std::regex filter(options.filter.empty() ? ".*" : options.filter);
  std::vector<const ScenarioCase*> selected;
  for (const ScenarioCase& c : scenario.cases)
    if (std::regex_search(c.name, filter)) selected.push_back(&c);

  Store store(options.db);
  const int64_t run_id = store.begin_run(collect_run_info(scenario.path, options.command));
  const std::unique_ptr<Backend> reference = make_backend(scenario.reference);
  std::map<std::string, std::unique_ptr<Backend>> backends;
  RunSummary summary;
  std::printf("%-44s %-8s %-6s %9s %10s %10s\n", "case", "backend", "check", "max ULP", "NMSE",
              "time (s)");
  for (size_t index = 0; index < selected.size(); ++index) {
    const ScenarioCase& c = *selected[index];
    std::fprintf(stderr, "[%zu/%zu] %s\n", index + 1, selected.size(), c.name.c_str());
    ++summary.cases;
    CaseRecord record{c.name, case_string(c, "op", ""), c.params.dump(), ""};
    std::vector<CheckRecord> checks;
    std::vector<Measurement> measurements;
    const std::string gate = case_string(c, "gate", case_string(c, "op", "") == "method"
                                                        ? "none"
                                                        : case_string(c, "op", "") == "attention_decode"
                                                              ? "tolerance"
                                                              : "exact");
    record.repro = repro_line(scenario, c, "ref");
    if (case_string(c, "op", "") == "method") {
      measurements = run_method(c);
      for (const Measurement& m : measurements)
        print_line(c.name + " " + m.metric, "ref", "MEAS", 0, m.value, 0);
      ++summary.measured;
      store.add_case(run_id, record, checks, measurements);
      continue;
    }
    const Op op = op_from_name(case_string(c, "op", ""));
    const CaseInput input = make_input(c);
    const OpOutput expected = run_op(*reference, op, c, input);
    std::vector<double> oracle;
    if (gate == "tolerance" && op == Op::AttentionDecode) {
      const std::vector<double> o = attention_decode_oracle(
          make_query(c, input), case_int(c, "q_heads", input.shape.heads), make_cache(c, input));
      oracle = o;
    }
    for (const std::string& name : case_backends(scenario, c, options)) {
      CheckRecord check;
      check.backend = name;
      check.reference = gate == "tolerance" ? "fp64 oracle" : reference->name();
      const BackendEntry* entry = find_backend(name);
      double seconds = 0.0;
      if (!entry || !entry->available) {
        check.status = "skip";
        check.got = entry ? entry->detail : "unknown backend";
      } else {
        auto& backend = backends[name];
        if (!backend) backend = entry->make();
        if (!backend->supports(op)) {
          check.status = "unsupported";
          check.got = name + " does not implement " + op_name(op);
        } else if (name == reference->name() && gate == "exact") {
          check.status = "pass";
          seconds = expected.seconds;
        } else {
          try {
            const OpOutput got = run_op(*backend, op, c, input);
            seconds = got.seconds;
            Comparison cmp = gate == "tolerance"
                                 ? compare_tolerance(oracle, got.values,
                                                     case_double(c, "tolerance", 1e-3))
                                 : compare_outputs(expected, got);
            check.status = gate == "none" || cmp.passed() ? "pass" : "fail";
            check.mismatches = cmp.mismatches;
            check.max_ulp = cmp.max_ulp;
            check.nmse = cmp.nmse;
            check.first_mismatch = cmp.first_mismatch;
            check.expected = cmp.where.empty() ? cmp.expected : cmp.where + ": " + cmp.expected;
            check.got = cmp.got;
          } catch (const Error& e) {
            check.status = "error";
            check.got = e.what();
          }
        }
      }
      measurements.push_back({name, "time", seconds, "s", 1, 0.0});
      const std::string shown = check.status == "pass"          ? "PASS"
                                : check.status == "fail"        ? "FAIL"
                                : check.status == "error"       ? "ERROR"
                                                                : "SKIP";
      print_line(c.name, name, shown, check.max_ulp, check.nmse, seconds);
      if (check.status == "pass") ++summary.passed;
      else if (check.status == "fail" || check.status == "error") {
        ++summary.failed;
        summary.failures.push_back({c.name, name, check.expected, check.expected, check.got,
                                    repro_line(scenario, c, name), check.first_mismatch});
      } else {
        ++summary.skipped;
      }
      checks.push_back(std::move(check));
    }
    store.add_case(run_id, record, checks, measurements);
  }
  store.finish_run(run_id, summary.failed ? "failed" : "complete");
  std::fflush(stdout);
  return summary;
}

}  // namespace kvq
