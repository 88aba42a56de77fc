// Study ops: scenario ops that answer a question on the reference only (op = "method", "sinks",
// "experts", ...), measured and stored, never gated against another backend. The runner asks
// this table for an op before it looks for a backend op. A study's keys and their types and
// defaults are its table in harness/scenario/case_keys.cpp (the loader fills its struct), so a new
// study is one table there, one entry here and one file of its own.
#pragma once

#include <string>
#include <vector>

#include "harness/scenario/scenario.h"
#include "harness/store/store.h"

namespace kvq {

struct StudyOutcome {
  std::vector<Measurement> measurements;  // backend "ref" unless the study says otherwise
  std::string note;                       // one line for the run table
  // What the numbers cannot hold (e.g. the tokens a predictor missed): stored with the case as
  // params_json["result"] when not null.
  nlohmann::json details;
};

struct StudyOp {
  std::string op;                              // the scenario's op = "..." (a study in op_keys())
  StudyOutcome (*run)(const ScenarioCase& c);  // throws kvq::Error naming what failed
};

// Every study op, in op_keys() order (tests/test_study_ops.cpp checks they are the same).
const std::vector<StudyOp>& study_ops();
const StudyOp* find_study_op(const std::string& op);  // nullptr when op is not a study

}  // namespace kvq
