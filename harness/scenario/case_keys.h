// The typed keys of each scenario op (docs/scenario-format.md "Keys"): one struct per kind of op
// and one table per op (harness/scenario/case_keys.cpp) naming, for every key the op reads, the
// struct member it fills and the default when the member's own initializer is not it. The loader
// (scenario.cpp) validates each key against its entry in key_defs() and, once a case is
// expanded, fills the op's struct (ScenarioCase::keys), so the runner and the studies read members,
// never a key by its name. docs/scenario-format.md's key table is case_keys_markdown(), checked by
// tests/test_scenario.cpp.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "backends/backend.h"
#include "reference/experts.h"
#include "reference/methods.h"
#include "reference/sinks.h"

namespace kvq {

// Path: a string naming a file, resolved relative to the scenario file at load (a missing file is
// a FILE:LINE key error); case names show its stem.
enum class KeyType { Int, Double, Bool, String, Path };

// One key of the [[case]] table. A common key (study = false) is accepted by every op and ignored
// by the ops that do not read it; a study key only by the ops whose table lists it.
struct KeyDef {
  std::string name;
  KeyType type;
  bool study = false;
  std::vector<std::string> choices;  // a String key's accepted values (empty: any)
  std::string prefix;                // its part of a swept case's name: prefix + value
  std::string doc;
};

// Every key, in docs/scenario-format.md's order; nullptr for an unknown one.
const std::vector<KeyDef>& key_defs();
const KeyDef* find_key_def(const std::string& name);
// The largest value an Int key accepts (harness/io/size_limits.h); 0: no limit.
int64_t key_limit(const KeyDef& key);

// expert_statistics' E when `experts` is not given and the input is synthetic.
constexpr int64_t kSyntheticExperts = 8;
// fwht's transform size when `n` is not given and the input is synthetic (a recording: its d).
constexpr int64_t kFwhtSyntheticN = 128;

// The backend ops (harness/run/runner.cpp): one struct, each op's table lists the members it reads.
struct BackendCase {
  Op op = Op::Fwht;
  int64_t seed = 1, tokens = 128, heads = 8, head_dim = 128;
  std::string dtype = "f32";
  int64_t outlier_channels = 4;
  double outlier_scale = 30.0;
  int64_t layers = 0;       // the recording layer read
  std::string tensor = "k";  // the recording tensor (layers.{i}.TENSOR)
  int64_t bits = 2, group = 128;
  std::string axis = "token";
  double clip = 1.0;
  std::string zero_point = "float";
  std::optional<int64_t> n;  // fwht: none is kFwhtSyntheticN, a recording's head_dim
  int64_t head_group = 4;
  bool reorder = true;
  std::string rotation = "key_grouped";
  int64_t hidden = 256;
  std::optional<int64_t> experts;  // none: 8 synthetic, a recording's metadata else its ids
  int64_t top_k = 2;
  std::optional<int64_t> q_heads;  // none: heads (synthetic), a recording's layers.{i}.q
  std::string gate = "exact";
  double tolerance = 1e-3;
  int64_t repetitions = 3;  // kvq bench
};

// What a study's recording is made of (harness/recording/case_recording.h): `kvq synth`'s keys
// with SynthParams' defaults (tests/test_study_ops.cpp checks they agree), or a model run.
struct RecordingKeys {
  // tokens: also input = "model"'s recorded length, BOS + 255 text tokens (docs/spec.md §4's
  // ground truth scores tokens 0..T-64, so shorter recordings say little about sinks).
  int64_t seed = 1, layers = 4, tokens = 256, heads = 4, head_dim = 32, hidden = 256;
  std::optional<int64_t> q_heads;  // none: max(8, heads)
  int64_t experts = 128, top_k = 4, image_tokens = 64;
  double text_attention = 0.0;
  std::optional<std::string> model, tokenizer, text;  // input = "model"; op method: perplexity
};

// A compression method's parameters (docs/spec.md §8), MethodParams' defaults.
struct MethodKeys {
  std::string method = "rtn";
  int64_t bits = MethodParams{}.bits, group = MethodParams{}.group,
          window = MethodParams{}.window;  // -1: the method's
  double clip = MethodParams{}.clip;       // -1: the method's
  std::string zero_point = "float";
  int64_t head_group = MethodParams{}.head_group;
  bool reorder = MethodParams{}.reorder;
  double outlier_fraction = MethodParams{}.outlier_fraction;
  int64_t first_tokens = MethodParams{}.first_tokens, pivots = PivotParams{}.top_k;
  std::string massive_rule = "token";
};

struct MethodCase : RecordingKeys, MethodKeys {
  std::optional<int64_t> ppl_tokens;  // none: the whole text
  int64_t ppl_window = 256;
};
struct SinksCase : RecordingKeys {
  double tau_mass = SinkScoreParams{}.tau_mass;
  int64_t pfn = 1;
  double tau_abs = MassiveParams{}.tau_abs, tau_rel = MassiveParams{}.tau_rel;
  double tau_k = KvSinkParams{}.tau_k;
  std::string massive_rule = "token";
};
struct ExpertsCase : RecordingKeys {
  double include_layers = SuperExpertParams{}.include_layers;
  double tau_abs = MassiveParams{}.tau_abs, tau_rel = MassiveParams{}.tau_rel;
};
// The model is LLaMA-2-13B's KV shape unless given (MemoryModel's defaults, checked by
// tests/test_study_ops.cpp); `heads` and `head_dim` stay none when not given: a recording then
// gives the channels.
struct MemoryCase : MethodKeys {
  int64_t layers = 40;
  std::optional<int64_t> heads, head_dim;  // none: 40 and 128
  int64_t seed = 1, tokens = 256, hidden = 256;
  std::optional<int64_t> q_heads;  // none: heads
  int64_t context = 4096;
  double budget_gib = 80.0, weights_gib = 24.2;
  int64_t batch = 0;  // 0: fp16's max batch, at least 1
};
struct VlmCase : RecordingKeys {
  int64_t bits = 2, bits_hi = 8;
  std::optional<int64_t> bits_pay;  // none: bits - 1
  int64_t group = 128;
};
struct PruningCase : RecordingKeys {
  std::string prune = "se1";
  double tau_abs = MassiveParams{}.tau_abs, tau_rel = MassiveParams{}.tau_rel;
  double tau_mass = SinkScoreParams{}.tau_mass;
};

using CaseKeys =
    std::variant<BackendCase, MethodCase, SinksCase, ExpertsCase, MemoryCase, VlmCase, PruningCase>;

// One op: its name, whether it is a study (reference only, measured) and the keys its table lists.
struct OpKeys {
  std::string op;
  bool study = false;
  std::vector<std::string> keys;
  bool reads(const std::string& key) const;
};

// Backend ops in op_name() order, then the study ops in docs/scenario-format.md's order.
const std::vector<OpKeys>& op_keys();
const OpKeys* find_op_keys(const std::string& op);  // nullptr for an unknown op

// The op's struct from a case's validated, expanded parameters (every key with its value).
CaseKeys parse_case_keys(const std::string& op, const nlohmann::json& params);

// docs/scenario-format.md's key table: one row per key, its type, the ops that read it with
// their defaults, and its doc.
std::string case_keys_markdown();

}  // namespace kvq
