// The table of study ops (harness/studies/studies.h). A new study is one line in the `// study ops`
// list below (op, its run function), its keys' table in harness/scenario/case_keys.cpp and a
// file of its own.
#include "harness/studies/studies.h"

#include "harness/studies/experts.h"
#include "harness/studies/memory.h"
#include "harness/studies/method.h"
#include "harness/studies/pruning.h"
#include "harness/studies/sinks.h"
#include "harness/studies/vlm.h"

namespace kvq {

const std::vector<StudyOp>& study_ops() {
  static const std::vector<StudyOp> ops = {
      // study ops
      {"method", method_study},
      {"sinks", sinks_op},
      {"experts", experts_op},
      {"memory", memory_study_case},
      {"vlm", vlm_study_case},
      {"expert_pruning", pruning_study_case},
  };
  return ops;
}

const StudyOp* find_study_op(const std::string& op) {
  for (const StudyOp& s : study_ops())
    if (s.op == op) return &s;
  return nullptr;
}

}  // namespace kvq
