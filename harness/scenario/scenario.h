// Scenario files (TOML, docs/scenario-format.md): a [scenario] table and [[case]] tables whose
// array values sweep. Loading validates every key and value and expands the sweeps; every error
// names FILE:LINE and the key.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "harness/scenario/case_keys.h"

namespace kvq {

struct ScenarioCase {
  std::string name;                   // stable: prefix or op, then one part per swept key
  std::string op;                     // the op's name (a key of op_keys())
  CaseKeys keys;                      // the op's struct: every key it reads, defaults filled
  nlohmann::json params;              // every key of the case with its expanded value (stored)
  std::vector<std::string> backends;  // per-case override (empty: the scenario's)
  std::string input = "synthetic";    // "synthetic" or a recording path (resolved)
  std::string where;                  // "FILE:LINE" of the [[case]]
};

struct Scenario {
  std::string path, name, description, reference = "ref";
  std::vector<std::string> backends;  // empty: every available backend
  std::vector<ScenarioCase> cases;
};

// `vars` fill `${NAME}` inside the file's quoted strings (`kvq run --var NAME=VALUE`), so a
// scenario names a file outside the repository (a 61 MB model) without writing its path; a
// `${NAME}` with no value is an error naming FILE:LINE:COLUMN and the variable.
using ScenarioVars = std::map<std::string, std::string>;
Scenario load_scenario(const std::string& path, const ScenarioVars& vars = {});

// The op's struct of a case (std::get, so a study reading another op's struct throws).
template <class C>
const C& case_keys(const ScenarioCase& c) {
  return std::get<C>(c.keys);
}

}  // namespace kvq
