// Scenario files (TOML, docs/scenario-format.md): a [scenario] table and [[case]] tables whose
// array values sweep. Loading validates every key and value and expands the sweeps; every error
// names FILE:LINE and the key.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace kvq {

struct ScenarioCase {
  std::string name;                   // stable: prefix or op, then one part per swept key
  nlohmann::json params;              // every key of the case with its expanded value
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

// Typed access to an expanded case's parameters with the documented defaults.
int64_t case_int(const ScenarioCase& c, const std::string& key, int64_t fallback);
double case_double(const ScenarioCase& c, const std::string& key, double fallback);
bool case_bool(const ScenarioCase& c, const std::string& key, bool fallback);
std::string case_string(const ScenarioCase& c, const std::string& key, const std::string& fallback);
// The recording tensor a case reads (layers.{i}.TENSOR): `tensor`, else by op: k_pre_rope for
// rotate_k and rotate_quantize (docs/spec.md §2), v for rotate_v, hidden_in for token_absmax, else
// k.
std::string case_tensor(const ScenarioCase& c);

}  // namespace kvq
