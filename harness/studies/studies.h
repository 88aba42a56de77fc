// Study ops: scenario ops that answer a question on the reference only (op = "method", "sinks",
// "experts", ...), measured and stored, never gated against another backend. The runner asks
// this table for an op before it looks for a backend op; the scenario loader accepts each study's
// op name and keys from it, so a new study is one entry here and one file of its own.
#pragma once

#include <string>
#include <vector>

#include "harness/scenario/scenario.h"
#include "harness/store/store.h"

namespace kvq {

// Path: a string naming a file, resolved relative to the scenario file at load (a missing file is
// a FILE:LINE key error); case names show its stem.
enum class KeyType { Int, Double, String, Bool, Path };

struct StudyKey {
  std::string name;
  KeyType type;
};

struct StudyOutcome {
  std::vector<Measurement> measurements;  // backend "ref" unless the study says otherwise
  std::string note;                       // one line for the run table
  // What the numbers cannot hold (e.g. the tokens a predictor missed): stored with the case as
  // params_json["result"] when not null.
  nlohmann::json details;
};

struct StudyOp {
  std::string op;                 // the scenario's op = "..."
  std::vector<StudyKey> keys;     // keys this op reads beyond the common ones (input, seed, ...)
  StudyOutcome (*run)(const ScenarioCase& c);  // throws kvq::Error naming what failed
};

// Every study op, in the order docs/scenario-format.md lists them.
const std::vector<StudyOp>& study_ops();
const StudyOp* find_study_op(const std::string& op);  // nullptr when op is not a study

}  // namespace kvq
