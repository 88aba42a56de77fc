// Every key of a [[case]] (key_defs()) and each op's table of the keys it reads (op tables below):
// a new key is one KeyDef and one row in the tables of the ops that read it; a new study op is
// one struct in case_keys.h, one table here and its run function (harness/studies/studies.cpp).
#include "harness/scenario/case_keys.h"

#include <algorithm>
#include <cstdio>
#include <functional>

#include "harness/io/size_limits.h"
#include "reference/error.h"

namespace kvq {

namespace {

constexpr int64_t kStudyIntLimit = int64_t{1} << 24;  // a study's own integer keys

KeyDef common(std::string name, KeyType type, std::string doc, std::string prefix = "",
              std::vector<std::string> choices = {}) {
  return {std::move(name), type, false, std::move(choices), std::move(prefix), std::move(doc)};
}
KeyDef study(std::string name, KeyType type, std::string doc,
             std::vector<std::string> choices = {}) {
  return {std::move(name), type, true, std::move(choices), "", std::move(doc)};
}

}  // namespace

const std::vector<KeyDef>& key_defs() {
  using K = KeyType;
  static const std::vector<KeyDef> keys = {
      common("name", K::String, "prefix of the expanded case names (default: the op)"),
      common("op", K::String, "what the case runs (below); may be swept"),
      common("input", K::String,
             "`synthetic` (seeded), a recording .safetensors path, or `model` (study ops that "
             "read a model)"),
      common("seed", K::Int, "synthetic: RNG seed (>= 0)", "s"),
      common("dtype", K::String, "synthetic input dtype (rotate_quantize reads f16)", "",
             {"f32", "f16"}),
      common("tokens", K::Int, "synthetic: T (input = model: the tokens recorded)", "T"),
      common("heads", K::Int, "synthetic: H_kv", "H"),
      common("head_dim", K::Int, "synthetic: d", "d"),
      common("outlier_channels", K::Int, "synthetic: channels per head scaled by outlier_scale",
             "o"),
      common("outlier_scale", K::Double, "synthetic: the outlier channels' factor", "x"),
      common("layers", K::Int,
             "a recording: the layer read (default: every layer, an implicit sweep); a study's "
             "synthetic recording: its layer count; memory: the model's",
             "L"),
      common("tensor", K::String, "a recording: the tensor read, layers.{i}.TENSOR", "",
             {"k", "k_pre_rope", "v", "q", "hidden_in"}),
      common("bits", K::Int, "quantization width: 1, 2, 3, 4 or 8", "b"),
      common("group", K::Int, "G > 0, values per quantization group", "G"),
      common("axis", K::String, "quantization groups run along", "", {"token", "channel"}),
      common("clip", K::Double, "r in (0, 1], the clip ratio", "clip"),
      common("zero_point", K::String, "zero point storage", "", {"float", "int"}),
      common("n", K::Int, "fwht: transform size, a power of two in 2..32768", "n"),
      common("head_group", K::Int, "heads per key-grouped rotation", "g"),
      common("rotation", K::String, "rotate_quantize's rotation", "",
             {"none", "key_grouped", "per_head"}),
      common("reorder", K::Bool,
             "calibrate a channel permutation on the first half of the tokens (docs/spec.md §2)"),
      common("hidden", K::Int, "synthetic: hidden size", "h"),
      common("experts", K::Int, "E, experts per MoE layer", "E"),
      common("top_k", K::Int, "experts per token, at most experts", "k"),
      common("q_heads", K::Int, "query heads, a multiple of heads", "Hq"),
      common("method", K::String, "the compression method (docs/spec.md §8)", "",
             {"fp32", "rtn", "kivi", "kvquant", "rotatekv", "kvsink+kvquant", "akvq-vl"}),
      common("window", K::Int, "R, recent tokens kept fp16 (kivi)", "R"),
      common("gate", K::String,
             "exact (bitwise), tolerance (attention_decode only) or none (measure only)", "",
             {"exact", "tolerance", "none"}),
      common("tolerance", K::Double, "max relative error for gate = \"tolerance\"", "tol"),
      common("backends", K::String, "per-case override of [scenario].backends (an array)"),
      common("repetitions", K::Int, "kvq bench: minimum repetitions (kvq run ignores it)", "r"),
      study("model", K::Path, "a llama2.c checkpoint"),
      study("tokenizer", K::Path, "the model's tokenizer"),
      study("text", K::Path, "a text file"),
      study("ppl_tokens", K::Int, "perplexity over the text's first N tokens"),
      study("ppl_window", K::Int, "W of docs/spec.md §9"),
      study("outlier_fraction", K::Double, "kvquant's sparse share per group"),
      study("first_tokens", K::Int, "kvquant's PFN N (0 keeps no sink)"),
      study("pivots", K::Int, "rotatekv's top-k pivot elements (0 keeps none)"),
      study("massive_rule", K::String, "docs/spec.md §4's massive-activation criterion",
            {"token", "channel"}),
      study("tau_mass", K::Double, "docs/spec.md §4 sink score threshold"),
      study("pfn", K::Int, "N of the PFN predictor"),
      study("tau_abs", K::Double, "docs/spec.md §4 massive criterion, absolute"),
      study("tau_rel", K::Double, "docs/spec.md §4 massive criterion, relative to the median"),
      study("tau_k", K::Double, "KVSink's key threshold"),
      study("include_layers", K::Double, "docs/spec.md §5: share of the layers considered"),
      study("context", K::Int, "tokens per sequence"),
      study("budget_gib", K::Double, "device memory"),
      study("weights_gib", K::Double, "model weights"),
      study("batch", K::Int, "batch of the peak-memory ratio (0: fp16's max batch)"),
      study("bits_hi", K::Int, "AKVQ-VL salient tokens' width"),
      study("bits_pay", K::Int, "width of the demoted tokens that pay for them"),
      study("image_tokens", K::Int, "synthetic: image block from token 8"),
      study("text_attention", K::Double,
            "synthetic: extra logit (nats) of text over image tokens in layers < L/2"),
      study("prune", K::String, "se<N>, all_se or control"),
  };
  return keys;
}

const KeyDef* find_key_def(const std::string& name) {
  for (const KeyDef& k : key_defs())
    if (k.name == name) return &k;
  return nullptr;
}

int64_t key_limit(const KeyDef& key) {
  static const std::vector<std::pair<std::string, int64_t>> limits = {
      {"tokens", int64_t{1} << 24}, {"heads", 4096},           {"q_heads", 4096},
      {"head_dim", 32768},          {"hidden", int64_t{1} << 20}, {"experts", kMaxExperts},
      {"top_k", kMaxExperts},       {"layers", 4096},          {"group", int64_t{1} << 24},
      {"window", int64_t{1} << 24}, {"repetitions", 1 << 20},  {"outlier_channels", 32768},
      {"head_group", 4096}};
  if (key.study) return kStudyIntLimit;
  for (const auto& [name, limit] : limits)
    if (name == key.name) return limit;
  return 0;
}

namespace {

// ---- op tables: for each key an op reads, the member it fills --------------------------------

template <class C>
using Member = std::variant<int64_t C::*, double C::*, bool C::*, std::string C::*,
                            std::optional<int64_t> C::*, std::optional<std::string> C::*>;

template <class C>
struct Row {
  std::string key;
  Member<C> member;
  nlohmann::json fallback = nullptr;  // this op's default when not the member's initializer
  std::string default_doc = "";       // the default in words, where a value cannot say it
};

template <class C>
void assign(C& c, const Member<C>& member, const nlohmann::json& v) {
  std::visit(
      [&](auto m) {
        using T = std::remove_cvref_t<decltype(c.*m)>;
        if constexpr (std::is_same_v<T, std::optional<int64_t>>)
          c.*m = v.get<int64_t>();
        else if constexpr (std::is_same_v<T, std::optional<std::string>>)
          c.*m = v.get<std::string>();
        else
          c.*m = v.get<T>();
      },
      member);
}

std::string number(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", v);
  return text;
}

template <class C>
std::string shown(const C& c, const Row<C>& row) {
  if (!row.default_doc.empty()) return row.default_doc;
  return std::visit(
      [&](auto m) -> std::string {
        using T = std::remove_cvref_t<decltype(c.*m)>;
        if constexpr (std::is_same_v<T, int64_t>) return std::to_string(c.*m);
        if constexpr (std::is_same_v<T, double>) return number(c.*m);
        if constexpr (std::is_same_v<T, bool>) return c.*m ? "true" : "false";
        if constexpr (std::is_same_v<T, std::string>) return "`" + c.*m + "`";
        return "none";
      },
      row.member);
}

// One op as the loader sees it: its keys, how to fill its struct and each key's default shown.
struct OpEntry {
  OpKeys keys;
  std::function<CaseKeys(const nlohmann::json&)> parse;
  std::vector<std::string> defaults;  // per key, as the doc shows it
};

template <class C>
OpEntry entry(std::string op, bool is_study, std::vector<Row<C>> rows,
              std::function<void(C&)> init = {}) {
  OpEntry e;
  e.keys.op = std::move(op);
  e.keys.study = is_study;
  const auto fill = [rows, init](const nlohmann::json& params) {
    C c;
    if (init) init(c);
    for (const Row<C>& row : rows) {
      if (params.contains(row.key))
        assign(c, row.member, params[row.key]);
      else if (!row.fallback.is_null())
        assign(c, row.member, row.fallback);
    }
    return c;
  };
  const C defaults = fill(nlohmann::json::object());
  for (const Row<C>& row : rows) {
    e.keys.keys.push_back(row.key);
    e.defaults.push_back(shown(defaults, row));
  }
  e.parse = [fill](const nlohmann::json& params) { return CaseKeys(fill(params)); };
  return e;
}

// a's rows then b's; a row of b whose key a lists replaces it (an op's own default).
template <class C>
std::vector<Row<C>> operator+(std::vector<Row<C>> a, const std::vector<Row<C>>& b) {
  for (const Row<C>& row : b) {
    auto same = std::find_if(a.begin(), a.end(), [&](const Row<C>& r) { return r.key == row.key; });
    if (same != a.end())
      *same = row;
    else
      a.push_back(row);
  }
  return a;
}

// Backend ops (harness/run/runner.cpp).
using B = BackendCase;
const std::vector<Row<B>> kInputRows = {{"seed", &B::seed},
                                        {"dtype", &B::dtype},
                                        {"tokens", &B::tokens},
                                        {"outlier_channels", &B::outlier_channels},
                                        {"outlier_scale", &B::outlier_scale},
                                        {"layers", &B::layers},
                                        {"tensor", &B::tensor}};
const std::vector<Row<B>> kShapeRows = {{"heads", &B::heads}, {"head_dim", &B::head_dim}};
const std::vector<Row<B>> kQuantRows = {{"bits", &B::bits},
                                        {"group", &B::group},
                                        {"axis", &B::axis},
                                        {"clip", &B::clip},
                                        {"zero_point", &B::zero_point}};
const std::vector<Row<B>> kRotationRows = {{"head_group", &B::head_group},
                                           {"reorder", &B::reorder}};
const std::vector<Row<B>> kGateRows = {
    {"gate", &B::gate}, {"tolerance", &B::tolerance}, {"repetitions", &B::repetitions}};

OpEntry backend(Op op, std::vector<Row<B>> rows) {
  return entry<B>(op_name(op), false, kGateRows + rows, [op](B& c) { c.op = op; });
}

// Study ops (harness/studies/): the recording they read, then their own keys.
template <class C>
std::vector<Row<C>> recording_rows() {
  return {{"seed", &C::seed},
          {"tokens", &C::tokens},
          {"heads", &C::heads},
          {"q_heads", &C::q_heads, nullptr, "max(8, heads)"},
          {"head_dim", &C::head_dim},
          {"hidden", &C::hidden},
          {"experts", &C::experts},
          {"top_k", &C::top_k},
          {"layers", &C::layers}};
}
template <class C>
std::vector<Row<C>> model_rows() {
  return {{"model", &C::model}, {"tokenizer", &C::tokenizer}, {"text", &C::text}};
}
template <class C>
std::vector<Row<C>> method_rows() {
  return {{"method", &C::method},
          {"bits", &C::bits},
          {"group", &C::group},
          {"window", &C::window, nullptr, "the method's"},
          {"clip", &C::clip, nullptr, "the method's"},
          {"zero_point", &C::zero_point},
          {"head_group", &C::head_group},
          {"reorder", &C::reorder}};
}

const std::vector<OpEntry>& entries() {
  static const std::vector<OpEntry> ops = [] {
    std::vector<OpEntry> v;
    const Row<B> tensor_pre_rope{"tensor", &B::tensor, "k_pre_rope"};
    v.push_back(backend(Op::Fwht, kInputRows + std::vector<Row<B>>{
                                                   {"outlier_channels", &B::outlier_channels, 0},
                                                   {"n", &B::n, nullptr, std::to_string(kFwhtSyntheticN) + " (a recording: its d)"}}));
    v.push_back(backend(Op::Reorder, kInputRows + kShapeRows));
    v.push_back(backend(Op::RotateK, kInputRows + kShapeRows + kRotationRows +
                                         std::vector<Row<B>>{tensor_pre_rope}));
    v.push_back(backend(Op::RotateV, kInputRows + kShapeRows +
                                         std::vector<Row<B>>{{"tensor", &B::tensor, "v"}}));
    v.push_back(backend(Op::Quantize, kInputRows + kShapeRows + kQuantRows));
    v.push_back(backend(Op::Dequantize, kInputRows + kShapeRows + kQuantRows));
    v.push_back(backend(Op::RotateQuantize,
                        kInputRows + kShapeRows + kQuantRows + kRotationRows +
                            std::vector<Row<B>>{{"rotation", &B::rotation}, tensor_pre_rope}));
    v.push_back(backend(Op::TokenAbsmax, kInputRows + std::vector<Row<B>>{
                                                          {"hidden", &B::hidden},
                                                          {"tensor", &B::tensor, "hidden_in"}}));
    v.push_back(backend(
        Op::ExpertStatistics,
        {{"seed", &B::seed},
         {"tokens", &B::tokens},
         {"layers", &B::layers},
         {"experts", &B::experts, nullptr,
          std::to_string(kSyntheticExperts) + " (a recording: its metadata, else its ids)"},
         {"top_k", &B::top_k}}));
    v.push_back(backend(Op::AttentionDecode,
                        kInputRows + kShapeRows + kQuantRows +
                            std::vector<Row<B>>{
                                {"q_heads", &B::q_heads, nullptr, "heads (a recording: its q)"},
                                {"gate", &B::gate, "tolerance"}}));

    using M = MethodCase;
    v.push_back(entry<M>("method", true,
                         method_rows<M>() +
                             std::vector<Row<M>>{{"outlier_fraction", &M::outlier_fraction},
                                                 {"first_tokens", &M::first_tokens},
                                                 {"pivots", &M::pivots},
                                                 {"massive_rule", &M::massive_rule},
                                                 {"seed", &M::seed},
                                                 {"tokens", &M::tokens},
                                                 {"heads", &M::heads},
                                                 {"q_heads", &M::q_heads, nullptr, "max(8, heads)"},
                                                 {"head_dim", &M::head_dim},
                                                 {"hidden", &M::hidden},
                                                 {"layers", &M::layers}} +
                             model_rows<M>() +
                             std::vector<Row<M>>{
                                 {"ppl_tokens", &M::ppl_tokens, nullptr, "the whole text"},
                                 {"ppl_window", &M::ppl_window}}));
    using S = SinksCase;
    v.push_back(entry<S>("sinks", true,
                         recording_rows<S>() + model_rows<S>() +
                             std::vector<Row<S>>{{"tau_mass", &S::tau_mass},
                                                 {"pfn", &S::pfn},
                                                 {"tau_abs", &S::tau_abs},
                                                 {"tau_rel", &S::tau_rel},
                                                 {"tau_k", &S::tau_k},
                                                 {"massive_rule", &S::massive_rule}}));
    using E = ExpertsCase;
    v.push_back(entry<E>("experts", true,
                         recording_rows<E>() +
                             std::vector<Row<E>>{{"include_layers", &E::include_layers},
                                                 {"tau_abs", &E::tau_abs},
                                                 {"tau_rel", &E::tau_rel}}));
    using Mem = MemoryCase;
    v.push_back(entry<Mem>(
        "memory", true,
        method_rows<Mem>() + std::vector<Row<Mem>>{
                                 {"layers", &Mem::layers},
                                 {"heads", &Mem::heads, nullptr, "40"},
                                 {"head_dim", &Mem::head_dim, nullptr, "128"},
                                 {"seed", &Mem::seed},
                                 {"tokens", &Mem::tokens},
                                 {"q_heads", &Mem::q_heads, nullptr, "heads"},
                                 {"hidden", &Mem::hidden},
                                 {"context", &Mem::context},
                                 {"budget_gib", &Mem::budget_gib},
                                 {"weights_gib", &Mem::weights_gib},
                                 {"batch", &Mem::batch, nullptr, "fp16's max batch"}}));
    using Vl = VlmCase;
    v.push_back(entry<Vl>(
        "vlm", true,
        std::vector<Row<Vl>>{{"bits", &Vl::bits},
                             {"bits_hi", &Vl::bits_hi},
                             {"bits_pay", &Vl::bits_pay, nullptr, "bits - 1"},
                             {"group", &Vl::group},
                             {"image_tokens", &Vl::image_tokens},
                             {"text_attention", &Vl::text_attention}} +
            recording_rows<Vl>()));
    using P = PruningCase;
    v.push_back(entry<P>("expert_pruning", true,
                         recording_rows<P>() +
                             std::vector<Row<P>>{{"prune", &P::prune},
                                                 {"tau_abs", &P::tau_abs},
                                                 {"tau_rel", &P::tau_rel},
                                                 {"tau_mass", &P::tau_mass}}));
    return v;
  }();
  return ops;
}

}  // namespace

bool OpKeys::reads(const std::string& key) const {
  return std::find(keys.begin(), keys.end(), key) != keys.end();
}

const std::vector<OpKeys>& op_keys() {
  static const std::vector<OpKeys> ops = [] {
    std::vector<OpKeys> v;
    for (const OpEntry& e : entries()) v.push_back(e.keys);
    return v;
  }();
  return ops;
}

const OpKeys* find_op_keys(const std::string& op) {
  for (const OpKeys& o : op_keys())
    if (o.op == op) return &o;
  return nullptr;
}

CaseKeys parse_case_keys(const std::string& op, const nlohmann::json& params) {
  for (const OpEntry& e : entries())
    if (e.keys.op == op) return e.parse(params);
  throw Error("unknown op '" + op + "'");
}

std::string case_keys_markdown() {
  static const char* kTypes[] = {"int", "float", "bool", "string", "path"};
  std::string out = "| key | type | read by: default | meaning |\n|---|---|---|---|\n";
  size_t backend_ops = 0;
  for (const OpEntry& e : entries()) backend_ops += e.keys.study ? 0 : 1;
  for (const KeyDef& key : key_defs()) {
    // The ops that read the key, grouped by the default each shows (first-seen order).
    std::vector<std::pair<std::string, std::vector<std::string>>> groups;
    for (const OpEntry& e : entries())
      for (size_t i = 0; i < e.keys.keys.size(); ++i) {
        if (e.keys.keys[i] != key.name) continue;
        auto g = std::find_if(groups.begin(), groups.end(),
                              [&](const auto& x) { return x.first == e.defaults[i]; });
        if (g == groups.end()) g = groups.insert(groups.end(), {e.defaults[i], {}});
        g->second.push_back(e.keys.op);
      }
    std::string read_by;
    for (const auto& [shown_default, ops] : groups) {
      // Most backend ops: "backend ops", with the ones left out named.
      size_t backends = 0;
      for (const std::string& op : ops) backends += find_op_keys(op)->study ? 0 : 1;
      const bool most = 2 * backends > backend_ops;
      std::string names;
      if (most) {
        names = "backend ops";
        std::string but;
        for (const OpEntry& e : entries())
          if (!e.keys.study && std::find(ops.begin(), ops.end(), e.keys.op) == ops.end())
            but += (but.empty() ? " (but " : ", ") + e.keys.op;
        names += but + (but.empty() ? "" : ")");
      }
      for (const std::string& op : ops)
        if (!most || find_op_keys(op)->study) names += (names.empty() ? "" : ", ") + op;
      read_by += (read_by.empty() ? "" : "; ") + names + ": " + shown_default;
    }
    if (read_by.empty()) read_by = "every op";
    std::string doc = key.doc;
    if (!key.choices.empty()) {
      doc += "; one of";
      for (const std::string& c : key.choices)
        doc += (&c == &key.choices.front() ? " `" : ", `") + c + "`";
    }
    out += "| `" + key.name + "` | " + kTypes[static_cast<int>(key.type)] + " | " + read_by +
           " | " + doc + " |\n";
  }
  return out;
}

}  // namespace kvq
