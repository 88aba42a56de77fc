// The table of study ops (harness/studies/studies.h). A new study is one line in the `// study ops`
// list below (op, its own keys, its run function) and a file of its own.
#include "harness/studies/studies.h"

#include "harness/studies/experts.h"
#include "harness/studies/memory.h"
#include "harness/studies/method.h"
#include "harness/studies/pruning.h"
#include "harness/studies/sinks.h"
#include "harness/studies/vlm.h"

namespace kvq {

namespace {

// Keys that make a llama2.c model an input (input = "model", harness/recording/case_recording.h)
// or, for op method, a perplexity (docs/spec.md §9).
const StudyKey kModel{"model", KeyType::Path};
const StudyKey kTokenizer{"tokenizer", KeyType::Path};
const StudyKey kText{"text", KeyType::Path};
// docs/spec.md §4 massive-activation criterion, read by sinks and experts.
const StudyKey kTauAbs{"tau_abs", KeyType::Double};
const StudyKey kTauRel{"tau_rel", KeyType::Double};
const StudyKey kMassiveRule{"massive_rule", KeyType::String};  // "token" (default) or "channel"

// Each study's own keys (docs/scenario-format.md "Study ops and their keys").
const std::vector<StudyKey> kMethodKeys = {kModel,
                                           kTokenizer,
                                           kText,
                                           {"ppl_tokens", KeyType::Int},
                                           {"ppl_window", KeyType::Int},
                                           {"outlier_fraction", KeyType::Double},
                                           {"first_tokens", KeyType::Int},
                                           {"pivots", KeyType::Int},
                                           kMassiveRule};
const std::vector<StudyKey> kSinksKeys = {kModel,
                                          kTokenizer,
                                          kText,
                                          {"tau_mass", KeyType::Double},
                                          {"pfn", KeyType::Int},
                                          kTauAbs,
                                          kTauRel,
                                          {"tau_k", KeyType::Double},
                                          kMassiveRule};
const std::vector<StudyKey> kExpertsKeys = {{"include_layers", KeyType::Double}, kTauAbs, kTauRel};

}  // namespace

const std::vector<StudyOp>& study_ops() {
  static const std::vector<StudyOp> ops = {
      // study ops
      {"method", kMethodKeys, method_study},
      {"sinks", kSinksKeys, sinks_op},
      {"experts", kExpertsKeys, experts_op},
      {"memory", memory_study_keys(), memory_study_case},
      {"vlm", vlm_study_keys(), vlm_study_case},
      {"expert_pruning", pruning_study_keys(), pruning_study_case},
  };
  return ops;
}

const StudyOp* find_study_op(const std::string& op) {
  for (const StudyOp& s : study_ops())
    if (s.op == op) return &s;
  return nullptr;
}

}  // namespace kvq
