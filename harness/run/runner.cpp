#include "harness/run/runner.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <regex>

#include "harness/io/safetensors.h"
#include "harness/io/size_limits.h"
#include "harness/run/op_inputs.h"
#include "harness/store/store.h"
#include "harness/studies/experts.h"
#include "harness/studies/studies.h"
#include "reference/error.h"
#include "reference/half.h"
#include "reference/methods.h"
#include "verify/compare.h"
#include "verify/metrics.h"

namespace kvq {

namespace {

// One case's input, synthetic or read from a recording.
struct CaseInput {
  KvShape shape;              // [T, H, d]; 2-D tensors are [T, 1, D]
  std::vector<float> x;       // [T, H * d], fp32 (exactly widened)
  std::vector<uint16_t> x16;  // fp16 bits of the same values when the input is fp16
};

// Everything a case's op needs besides the input, built once per case and shared by every
// backend, so a backend's timing covers its op call only.
struct Prepared {
  Op op = Op::Fwht;
  CaseInput in;
  int fwht_n = 0;
  QuantParams quant;
  RotationParams rotation;  // rotate_k; rotate_quantize key_grouped
  RotateQuantizeParams rq;
  std::vector<int32_t> perm;         // reorder
  Quantized quantized;               // dequantize: the reference's quantization of the input
  std::vector<int32_t> ids, argmax;  // expert_statistics: routing [T, top_k]
  std::vector<float> absmax;
  int64_t experts = 8, top_k = 2;
  std::vector<float> query;  // attention_decode: [q_heads, d]
  int64_t q_heads = 0;
  DecodeCache cache;
};

// What one backend produced for a case; which fields are set depends on the op.
struct OpOutput {
  std::vector<float> values;
  std::vector<int32_t> indices;
  std::optional<Quantized> quantized;
  double seconds = 0.0;
};

QuantParams quant_params(const BackendCase& k) {
  QuantParams p;
  p.bits = static_cast<int>(k.bits);
  p.group = k.group;
  p.axis = k.axis == "channel" ? Axis::Channel : Axis::Token;
  p.clip = static_cast<float>(k.clip);
  p.zero_point = k.zero_point == "int" ? ZeroPoint::Int : ZeroPoint::Float;
  return p;
}

std::string layer_tensor(const BackendCase& k, const std::string& tensor) {
  return "layers." + std::to_string(k.layers) + "." + tensor;
}

CaseInput make_input(const ScenarioCase& c, const BackendCase& k) {
  const Op op = k.op;
  CaseInput in;
  if (c.input == "synthetic") {
    in.shape.tokens = k.tokens;
    in.shape.heads = op == Op::Fwht || op == Op::TokenAbsmax ? 1 : k.heads;
    in.shape.head_dim = op == Op::Fwht          ? k.n.value_or(kFwhtSyntheticN)
                        : op == Op::TokenAbsmax ? k.hidden
                                                : k.head_dim;
    in.x = kv_with_outliers(in.shape.tokens, in.shape.heads, in.shape.head_dim,
                            static_cast<uint64_t>(k.seed), k.outlier_channels, k.outlier_scale);
    // A planted massive activation (docs/spec.md §4: ~1000x the typical magnitude) at a
    // non-initial token, so the absmax and argmax paths see a clear winner.
    if (op == Op::TokenAbsmax && in.shape.tokens > 2)
      in.x[static_cast<size_t>(in.shape.head_dim + std::min<int64_t>(3, in.shape.head_dim - 1))] =
          2000.0f;  // token 1
  } else {
    const SafetensorsFile file = SafetensorsFile::open(c.input);
    const std::string name = layer_tensor(k, k.tensor);
    const TensorView view = file.view(name);
    if (view.shape.size() == 3) {
      in.shape = {view.shape[0], view.shape[1], view.shape[2]};
    } else if (view.shape.size() == 2) {
      in.shape = {view.shape[0], 1, view.shape[1]};
    } else {
      throw Error(c.input + ": tensor '" + name + "': expected 2 or 3 dimensions, got " +
                  shape_string(view.shape));
    }
    if (in.shape.tokens < 1 || in.shape.heads < 1 || in.shape.head_dim < 1)
      throw Error(c.input + ": tensor '" + name + "' has shape " + shape_string(view.shape) +
                  "; every dimension must be >= 1");
    in.x = file.read_f32(name);
    if (view.dtype == DType::F16) {  // the fused path reads fp16 as an engine stores it
      const auto* bits = static_cast<const uint16_t*>(view.data);
      in.x16.assign(bits, bits + view.numel());
    }
  }
  if (k.dtype == "f16" && in.x16.empty()) {
    in.x16.resize(in.x.size());
    for (size_t i = 0; i < in.x.size(); ++i) {
      in.x16[i] = float_to_half(in.x[i]);
      in.x[i] = half_to_float(in.x16[i]);
    }
  }
  return in;
}

RotationParams rotation_params(const BackendCase& k, const CaseInput& in) {
  RotationParams p;
  p.head_group = static_cast<int>(k.head_group);
  if (k.reorder) {
    // docs/spec.md §2: the permutation is calibrated on the first half of the tokens (at least one)
    // of this same input, then applied to all of them.
    const int64_t calib = std::max<int64_t>(1, in.shape.tokens / 2);
    const std::span<const float> head(in.x.data(),
                                      static_cast<size_t>(calib * in.shape.channels()));
    const KvShape calib_shape{calib, in.shape.heads, in.shape.head_dim};
    p.perm = calibrate_permutation(rotate_k(head, calib_shape, RotationParams{p.head_group, {}}),
                                   calib, in.shape.channels());
  }
  return p;
}

// Synthetic MoE routing: each token routes to top_k consecutive experts from a random first one;
// expert 1 is planted as a Super Expert (outputs ~50x the others, docs/spec.md §5).
void synthetic_routing(const BackendCase& k, Prepared& p) {
  p.experts = k.experts.value_or(kSyntheticExperts);
  p.top_k = std::min(k.top_k, p.experts);
  SplitMix64 rng(static_cast<uint64_t>(k.seed));
  for (int64_t t = 0; t < p.in.shape.tokens; ++t) {
    const int64_t first = static_cast<int64_t>(rng.next() % static_cast<uint64_t>(p.experts));
    for (int64_t k = 0; k < p.top_k; ++k) {
      const int64_t e = (first + k) % p.experts;
      p.ids.push_back(static_cast<int32_t>(e));
      p.absmax.push_back(static_cast<float>(std::fabs(rng.normal()) * (e == 1 ? 50.0 : 1.0)));
      p.argmax.push_back(static_cast<int32_t>(rng.next() % 256));
    }
  }
}

void recorded_routing(const ScenarioCase& c, const BackendCase& k, Prepared& p) {
  const SafetensorsFile file = SafetensorsFile::open(c.input);
  const std::string ids = layer_tensor(k, "experts.ids");
  const TensorView view = file.view(ids);
  if (view.shape.size() != 2)
    throw Error(c.input + ": tensor '" + ids + "': expected [T, top_k], got " +
                shape_string(view.shape));
  if (view.shape[0] < 1 || view.shape[1] < 1)
    throw Error(c.input + ": tensor '" + ids + "' has shape " + shape_string(view.shape) +
                "; every dimension must be >= 1");
  p.in.shape = {view.shape[0], 1, view.shape[1]};
  p.top_k = view.shape[1];
  p.ids = file.read_i32(ids);
  p.absmax = file.read_f32(layer_tensor(k, "experts.down_absmax"));
  if (file.has(layer_tensor(k, "experts.down_argmax")))
    p.argmax = file.read_i32(layer_tensor(k, "experts.down_argmax"));
  // E: the scenario's `experts`, else the recording's metadata, else the largest id + 1.
  int64_t experts = 0;
  for (int32_t id : p.ids) experts = std::max<int64_t>(experts, int64_t{id} + 1);
  check_limit(c.input + ": tensor '" + ids + "'", "expert id", experts - 1, kMaxExperts - 1);
  experts = std::max(experts, metadata_experts(file).value_or(0));
  p.experts = k.experts.value_or(experts);
}

// attention_decode: K and V quantized (no rotation) into a decode cache, one query. Synthetic:
// K is the input, V and q are further seeded normals. Recording: the layer's k, v and the
// last token's q.
void attention_inputs(const ScenarioCase& c, const BackendCase& k, Prepared& p) {
  const CaseInput& in = p.in;
  const uint64_t seed = static_cast<uint64_t>(k.seed);
  std::vector<float> v;
  if (c.input == "synthetic") {
    v = kv_with_outliers(in.shape.tokens, in.shape.heads, in.shape.head_dim, seed + 7, 0, 1.0);
    p.q_heads = k.q_heads.value_or(in.shape.heads);
    p.query = kv_with_outliers(1, p.q_heads, in.shape.head_dim, seed + 11, 0, 1.0);
  } else {
    const SafetensorsFile file = SafetensorsFile::open(c.input);
    v = file.read_f32(layer_tensor(k, "v"));
    const std::string q = layer_tensor(k, "q");
    const TensorView qv = file.view(q);
    if (qv.shape.size() != 3 || qv.shape[0] != in.shape.tokens || qv.shape[2] != in.shape.head_dim)
      throw Error(c.input + ": tensor '" + q + "': expected [" + std::to_string(in.shape.tokens) +
                  ", q_heads, " + std::to_string(in.shape.head_dim) + "], got " +
                  shape_string(qv.shape));
    p.q_heads = qv.shape[1];
    const std::vector<float> all = file.read_f32(q);
    const size_t row = static_cast<size_t>(p.q_heads * in.shape.head_dim);
    p.query.assign(all.end() - static_cast<std::ptrdiff_t>(row), all.end());
  }
  if (v.size() != in.x.size())
    throw Error(c.name + ": V has " + std::to_string(v.size()) + " values, K " +
                std::to_string(in.x.size()));
  p.cache.shape = in.shape;
  p.cache.k = quantize(in.x, in.shape.tokens, in.shape.channels(), p.quant, "attention keys");
  p.cache.v = quantize(v, in.shape.tokens, in.shape.channels(), p.quant, "attention values");
}

Prepared prepare(const ScenarioCase& c, const BackendCase& k) {
  const Op op = k.op;
  Prepared p;
  p.op = op;
  p.quant = quant_params(k);
  if (op == Op::ExpertStatistics) {
    if (c.input == "synthetic") {
      p.in.shape = {k.tokens, 1, 1};
      synthetic_routing(k, p);
    } else {
      recorded_routing(c, k, p);
    }
    return p;
  }
  p.in = make_input(c, k);
  switch (op) {
    case Op::Fwht:
      // Synthetic: [tokens, n]. Recording: blocks of n (default head_dim) over the tensor.
      p.fwht_n = static_cast<int>(c.input == "synthetic" ? p.in.shape.head_dim
                                                         : k.n.value_or(p.in.shape.head_dim));
      break;
    case Op::Reorder: {
      const int64_t cols = p.in.shape.channels();
      p.perm.resize(static_cast<size_t>(cols));
      SplitMix64 rng(static_cast<uint64_t>(k.seed));
      for (int64_t i = 0; i < cols; ++i) p.perm[i] = static_cast<int32_t>(i);
      for (int64_t i = cols - 1; i > 0; --i)  // Fisher-Yates
        std::swap(p.perm[i], p.perm[rng.next() % static_cast<uint64_t>(i + 1)]);
      break;
    }
    case Op::RotateK: p.rotation = rotation_params(k, p.in); break;
    case Op::Dequantize:
      p.quantized = quantize(p.in.x, p.in.shape.tokens, p.in.shape.channels(), p.quant, c.name);
      break;
    case Op::RotateQuantize: {
      p.rq.rotation = k.rotation == "none"       ? AppendRotation::None
                      : k.rotation == "per_head" ? AppendRotation::PerHead
                                                 : AppendRotation::KeyGrouped;
      if (p.rq.rotation == AppendRotation::KeyGrouped)
        p.rq.rotation_params = rotation_params(k, p.in);
      p.rq.quant = p.quant;
      break;
    }
    case Op::AttentionDecode: attention_inputs(c, k, p); break;
    default: break;
  }
  return p;
}

OpOutput run_op(const Backend& b, const Prepared& p) {
  OpOutput out;
  const CaseInput& in = p.in;
  const int64_t rows = in.shape.tokens, cols = in.shape.channels();
  if (p.op == Op::Fwht) out.values = in.x;  // fwht works in place: the copy is not timed
  const auto start = std::chrono::steady_clock::now();
  switch (p.op) {
    case Op::Fwht: b.fwht(out.values, p.fwht_n); break;
    case Op::Reorder: out.values = b.reorder(in.x, rows, p.perm); break;
    case Op::RotateK: out.values = b.rotate_k(in.x, in.shape, p.rotation); break;
    case Op::RotateV: out.values = b.rotate_v(in.x, in.shape); break;
    case Op::Quantize: out.quantized = b.quantize(in.x, rows, cols, p.quant); break;
    case Op::Dequantize: out.values = b.dequantize(p.quantized); break;
    case Op::RotateQuantize: {
      const Shape shape{rows, in.shape.heads, in.shape.head_dim};
      const TensorView view = in.x16.empty() ? TensorView{in.x.data(), DType::F32, shape}
                                             : TensorView{in.x16.data(), DType::F16, shape};
      out.quantized = b.rotate_quantize(view, in.shape, p.rq);
      break;
    }
    case Op::TokenAbsmax: {
      TokenAbsmax t = b.token_absmax(in.x, rows, cols);
      out.values = std::move(t.absmax);
      out.indices = std::move(t.argmax);
      break;
    }
    case Op::ExpertStatistics: {
      const std::vector<ExpertStat> stats =
          b.expert_statistics(p.ids, p.absmax, p.argmax, rows, p.top_k, p.experts);
      for (const ExpertStat& s : stats) {
        out.values.push_back(s.max_abs);
        out.indices.push_back(s.token);
        out.indices.push_back(s.channel);
      }
      break;
    }
    case Op::AttentionDecode: out.values = b.attention_decode(p.query, p.q_heads, p.cache); break;
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

// Bitwise over every output: codes, scales, zeros and dequant of a quantization (compare.h), or
// the values then the indices (token_absmax argmax, expert token/channel).
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
  if (values.where.empty()) values.where = "values";
  if (!values.passed()) return values;
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
    if (ch == '\'') escaped += "'\\'";  // close, escaped quote, reopen (shell)
    escaped += ch;
  }
  std::string line = "kvq run " + s.path + " --filter '^" + escaped + "$'";
  if (!backend.empty()) line += " --backends " + backend;
  return line;
}

class Backends {
 public:
  explicit Backends(const RunOptions& options) : extra_(options.extra_backends) {}

  const BackendEntry* find(const std::string& name) const {
    for (const BackendEntry& e : extra_)
      if (e.name == name) return &e;
    for (const BackendEntry& e : backend_registry())
      if (e.name == name) return &e;
    return nullptr;
  }
  const Backend& get(const BackendEntry& entry) {
    std::unique_ptr<Backend>& b = made_[entry.name];
    if (!b) b = entry.make();
    return *b;
  }
  std::vector<std::string> available() const {
    std::vector<std::string> names;
    for (const BackendEntry& e : backend_registry())
      if (e.available) names.push_back(e.name);
    return names;
  }

 private:
  std::vector<BackendEntry> extra_;
  std::map<std::string, std::unique_ptr<Backend>> made_;
};

// Per-case backends: --backends, else the case's, else the scenario's (all three "named"),
// else every available one (not named).
struct CaseBackends {
  std::vector<std::string> names;
  bool named = true;
};
CaseBackends case_backends(const Scenario& s, const ScenarioCase& c, const RunOptions& o,
                           const Backends& backends) {
  if (!o.backends.empty()) return {o.backends};
  if (!c.backends.empty()) return {c.backends};
  if (!s.backends.empty()) return {s.backends};
  return {backends.available(), false};
}

BackendTally& tally(RunSummary& summary, const std::string& backend) {
  for (BackendTally& t : summary.backends)
    if (t.backend == backend) return t;
  BackendTally& t = summary.backends.emplace_back();
  t.backend = backend;
  return t;
}

// The printed table: one line per (case, backend), fixed columns.
class Table {
 public:
  explicit Table(int name_width) : width_(name_width) {
    std::printf("%-*s %-8s %-6s %9s %10s %11s  %s\n", width_, "case", "backend", "check", "max ULP",
                "NMSE", "time (s)", "note");
  }
  void line(const std::string& name, const std::string& backend, const std::string& check,
            const CheckRecord* k, double seconds, const std::string& note) const {
    if (k) {
      std::printf("%-*s %-8s %-6s %9.3g %10.3g %11.3e  %s\n", width_, name.c_str(), backend.c_str(),
                  check.c_str(), k->max_ulp, k->nmse, seconds, note.c_str());
    } else {
      std::printf("%-*s %-8s %-6s %9s %10s %11.3e  %s\n", width_, name.c_str(), backend.c_str(),
                  check.c_str(), "-", "-", seconds, note.c_str());
    }
    std::fflush(stdout);
  }

 private:
  int width_;
};

// Progress on stderr: a self-overwriting line on a terminal, every tenth of the cases otherwise.
class Progress {
 public:
  explicit Progress(size_t total) : total_(total), tty_(isatty(fileno(stderr)) != 0) {}
  void at(size_t index, const std::string& name) const {
    if (tty_) {
      std::fprintf(stderr, "\r\033[K[%zu/%zu] %s", index + 1, total_, name.c_str());
    } else if (total_ >= 20 && (index + 1) % (total_ / 10) == 0) {
      std::fprintf(stderr, "kvq: %zu/%zu cases\n", index + 1, total_);
    }
  }
  void done() const {
    if (tty_) std::fprintf(stderr, "\r\033[K");
  }

 private:
  size_t total_;
  bool tty_;
};

std::string number(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3g", v);
  return text;
}

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

}  // namespace

std::vector<const ScenarioCase*> select_cases(const Scenario& scenario, const RunOptions& options) {
  std::regex filter;
  try {
    filter = std::regex(options.filter.empty() ? std::string(".*") : options.filter);
  } catch (const std::regex_error& e) {
    throw Error("--filter '" + options.filter + "': not a valid regular expression (" + e.what() +
                ")");
  }
  if (options.shard_count < 1 || options.shard_index < 0 ||
      options.shard_index >= options.shard_count)
    throw Error("--shard " + std::to_string(options.shard_index) + "/" +
                std::to_string(options.shard_count) + ": needs n >= 1 and 0 <= i < n");
  std::vector<const ScenarioCase*> selected;
  for (size_t i = 0; i < scenario.cases.size(); ++i) {
    const ScenarioCase& c = scenario.cases[i];
    // --shard i/n (RunOptions): the slice is fixed by the expansion index, before the filter.
    if (static_cast<int64_t>(i) % options.shard_count != options.shard_index) continue;
    if (!std::regex_search(c.name, filter)) continue;
    selected.push_back(&c);
  }
  return selected;
}

RunSummary run_scenario(const Scenario& scenario, const RunOptions& options) {
  Backends backends(options);
  for (const std::string& name : options.backends)
    if (!backends.find(name)) (void)make_backend(name);  // throws, naming the known backends
  // A misspelt backend in the file would otherwise show as SKIP and let a gate pass unrun.
  auto check_known = [&](const std::vector<std::string>& names, const std::string& where) {
    for (const std::string& name : names)
      if (!backends.find(name)) {
        std::string known;
        for (const BackendEntry& e : backend_registry())
          known += (known.empty() ? "" : ", ") + e.name;
        throw Error(where + ": key 'backends': unknown backend '" + name + "' (known: " + known +
                    ")");
      }
  };
  check_known(scenario.backends, scenario.path + ": [scenario]");
  for (const ScenarioCase& c : scenario.cases) check_known(c.backends, c.where);
  const std::vector<const ScenarioCase*> selected = select_cases(scenario, options);
  size_t width = 24;
  for (const ScenarioCase* c : selected)
    width = std::max(width, std::min<size_t>(c->name.size(), 60));
  const BackendEntry* reference_entry = backends.find(scenario.reference);
  if (!reference_entry || !reference_entry->available)
    (void)make_backend(scenario.reference);  // throws with the reason
  const Backend& reference = backends.get(*reference_entry);

  Store store(options.db);
  RunSummary summary;
  summary.run_id = store.begin_run(collect_run_info(scenario.path, options.command));
  const Table table(static_cast<int>(width));
  const Progress progress(selected.size());
  try {
    for (size_t index = 0; index < selected.size(); ++index) {
      const ScenarioCase& c = *selected[index];
      progress.at(index, c.name);
      ++summary.cases;
      CaseRecord record{c.name,
                        c.op == "method" ? case_keys<MethodCase>(c).method : c.op,
                        c.params.dump(), repro_line(scenario, c, "")};
      std::vector<CheckRecord> checks;
      std::vector<Measurement> measurements;

      // Study ops (harness/studies/studies.h): the reference only, measured, never gated. A study
      // that throws is an error check of backend "ref" (the run goes on with the other cases).
      if (const StudyOp* study = find_study_op(c.op)) {
        const auto start = std::chrono::steady_clock::now();
        std::string note, check_name = "MEAS";
        try {
          StudyOutcome outcome = study->run(c);
          measurements = std::move(outcome.measurements);
          note = outcome.note;
          if (!outcome.details.is_null()) {
            nlohmann::json params = c.params;
            params["result"] = std::move(outcome.details);
            record.params_json = params.dump();
          }
          ++summary.measured;
        } catch (const Error& e) {
          CheckRecord check;
          check.backend = check.reference = reference.name();
          check.status = "error";
          check.got = note = one_line(e.what());
          checks.push_back(check);
          summary.failures.push_back(
              {c.name, check.backend, "error", "", check.got, repro_line(scenario, c, ""), -1});
          ++summary.failed;
          ++tally(summary, check.backend).failed;
          check_name = "ERROR";
        }
        double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        for (const Measurement& m : measurements)
          if (m.metric == "time") seconds = m.value;
        table.line(c.name, reference.name(), check_name, nullptr, seconds, note);
        store.add_case(summary.run_id, record, checks, measurements);
        continue;
      }

      const BackendCase& k = case_keys<BackendCase>(c);
      const Op op = k.op;
      // docs/spec.md §7: attention is gated by tolerance against the fp64 oracle (its default gate,
      // harness/scenario/case_keys.cpp); the rest bitwise.
      const std::string& gate = k.gate;
      const double tolerance = k.tolerance;
      // Choice: a case whose input cannot be built or whose reference run fails is recorded as
      // an error of every selected backend (the gate goes on with the other cases).
      std::optional<Prepared> prepared;
      std::optional<OpOutput> expected;
      std::vector<double> oracle;
      std::string case_error;
      try {
        prepared.emplace(prepare(c, k));
        expected.emplace(run_op(reference, *prepared));
        if (gate == "tolerance") {
          if (op != Op::AttentionDecode)
            throw Error(c.where + ": key 'gate': tolerance applies to attention_decode only");
          oracle = attention_decode_oracle(prepared->query, prepared->q_heads, prepared->cache);
        }
      } catch (const Error& e) {
        case_error = std::string("reference ") + reference.name() + ": " + e.what();
      }

      const CaseBackends selected_backends = case_backends(scenario, c, options, backends);
      for (const std::string& name : selected_backends.names) {
        CheckRecord check;
        check.backend = name;
        check.reference = gate == "tolerance" ? "fp64 oracle" : reference.name();
        const BackendEntry* entry = backends.find(name);
        double seconds = 0.0;
        std::string note;
        bool measured = false;
        if (!entry || !entry->available) {
          check.status = "unsupported";  // SKIP: listed but not runnable here
          check.got = note = entry ? "not available: " + entry->detail : "unknown backend";
        } else if (!backends.get(*entry).supports(op)) {
          check.status = "unsupported";
          check.got = note = "unsupported: " + name + " does not implement " + op_name(op);
        } else if (!case_error.empty()) {
          check.status = "error";
          check.got = note = one_line(case_error);
        } else {
          try {
            const bool is_reference = name == reference.name() && entry == reference_entry;
            const OpOutput got = is_reference ? *expected : run_op(backends.get(*entry), *prepared);
            seconds = got.seconds;
            const Comparison cmp = gate == "tolerance"
                                       ? compare_tolerance(oracle, got.values, tolerance)
                                       : compare_outputs(*expected, got);
            check.mismatches = cmp.mismatches;
            check.max_ulp = cmp.max_ulp;
            check.nmse = cmp.nmse;
            check.first_mismatch = cmp.first_mismatch;
            check.expected = cmp.expected;
            check.got = cmp.got;
            if (gate == "none") {
              measured = true;
              measurements.push_back({name, "max_ulp", cmp.max_ulp, "ulp", 1, 0.0});
              measurements.push_back({name, "nmse", cmp.nmse, "ratio", 1, 0.0});
            } else {
              check.status = cmp.passed() ? "pass" : "fail";
              if (gate == "tolerance")
                note = "max rel error " + number(cmp.max_rel_error) + " (tolerance " +
                       number(tolerance) + ")";
              if (!cmp.passed()) {
                note = cmp.where + "[" + std::to_string(cmp.first_mismatch) + "]: expected " +
                       cmp.expected + ", got " + cmp.got;
                if (cmp.shape_mismatch) note = cmp.where + ": sizes differ";
                summary.failures.push_back({c.name, name, cmp.where, cmp.expected, cmp.got,
                                            repro_line(scenario, c, name), cmp.first_mismatch});
              }
            }
          } catch (const Error& e) {
            check.status = "error";
            check.got = note = one_line(e.what());
          }
        }
        if (entry && entry->available && check.status != "unsupported")
          measurements.push_back({name, "time", seconds, "s", 1, 0.0});
        if (check.status == "error")
          summary.failures.push_back(
              {c.name, name, "error", "", check.got, repro_line(scenario, c, name), -1});
        const std::string shown = measured                  ? "MEAS"
                                  : check.status == "pass"  ? "PASS"
                                  : check.status == "fail"  ? "FAIL"
                                  : check.status == "error" ? "ERROR"
                                                            : "SKIP";
        table.line(c.name, name, shown,
                   measured || check.status == "pass" || check.status == "fail" ? &check : nullptr,
                   seconds, note);
        if (measured) {
          ++summary.measured;
          continue;  // gate = none: a measurement, no check row
        }
        BackendTally& t = tally(summary, name);
        t.named = t.named || selected_backends.named;
        if (check.status == "pass") {
          ++summary.passed;
          ++t.passed;
        } else if (check.status == "fail" || check.status == "error") {
          ++summary.failed;
          ++t.failed;
        } else {
          ++summary.skipped;
          if (!t.skipped++) t.skip_reason = note;
        }
        checks.push_back(std::move(check));
      }
      store.add_case(summary.run_id, record, checks, measurements);
    }
  } catch (...) {
    progress.done();
    store.finish_run(summary.run_id, "failed");  // the run stopped before its last case
    throw;
  }
  progress.done();
  store.finish_run(summary.run_id, "complete");
  return summary;
}

std::string gate_failure(const RunSummary& summary, bool allow_skip) {
  if (summary.failed)
    return std::to_string(summary.failed) + " check" + (summary.failed == 1 ? "" : "s") +
           " failed (listed above)";
  if (allow_skip) return "";
  for (const BackendTally& t : summary.backends)
    if (t.named && t.skipped)
      return "backend '" + t.backend + "' was named but " + std::to_string(t.skipped) +
             " of its checks did not run (" + t.skip_reason + "); --allow-skip accepts this";
  if (summary.passed == 0)
    return "no check ran (" + std::to_string(summary.cases) + " cases, " +
           std::to_string(summary.skipped) + " checks skipped, " +
           std::to_string(summary.measured) + " measured); --allow-skip accepts this";
  return "";
}

}  // namespace kvq
