#include "harness/scenario/scenario.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <set>

#include "harness/io/safetensors.h"
#include "harness/io/size_limits.h"
#include "reference/error.h"
#include "reference/quantize.h"

namespace kvq {

namespace {

// " (why)" when a file's status could not be read (a name too long, a folder not searchable).
std::string reason(const std::error_code& ec) {
  return ec ? " (" + ec.message() + ")" : "";
}

// One scalar of a study's own key, type-checked by its KeyType; a Path is resolved relative to
// the scenario's folder and must name a file.
nlohmann::json study_scalar(const KeyDef& key, const toml::node& node, const std::string& where,
                            const std::filesystem::path& folder) {
  switch (key.type) {
    case KeyType::Int: {
      if (!node.is_integer()) throw Error(where + ": expected an integer");
      const int64_t v = *node.value<int64_t>();
      if (v < 0) throw Error(where + ": out of range (got " + std::to_string(v) + ")");
      check_limit(where, "value", v, key_limit(key));
      return v;
    }
    case KeyType::Double: {
      if (!node.is_number()) throw Error(where + ": expected a number");
      const double v = *node.value<double>();
      if (!std::isfinite(v) || v < 0.0)
        throw Error(where + ": out of range (got " + std::to_string(v) + ")");
      return v;
    }
    case KeyType::Bool:
      if (!node.is_boolean()) throw Error(where + ": expected true or false");
      return *node.value<bool>();
    case KeyType::String: {
      if (!node.is_string()) throw Error(where + ": expected a string");
      const std::string v = *node.value<std::string>();
      if (!key.choices.empty() &&
          std::find(key.choices.begin(), key.choices.end(), v) == key.choices.end()) {
        std::string list;
        for (const std::string& c : key.choices)
          list += (list.empty() ? "\"" : " or \"") + c + "\"";
        throw Error(where + ": expected " + list + " (got '" + v + "')");
      }
      return v;
    }
    case KeyType::Path: {
      if (!node.is_string()) throw Error(where + ": expected a file path (a string)");
      const std::filesystem::path file = folder / *node.value<std::string>();
      if (std::error_code ec; !std::filesystem::is_regular_file(file, ec))
        throw Error(where + ": file '" + file.string() + "' not found" + reason(ec));
      return file.string();
    }
  }
  throw Error(where + ": key type not handled");
}

std::string at(const std::string& path, const toml::node& node, const std::string& key) {
  return path + ":" + std::to_string(node.source().begin.line) + ":" +
         std::to_string(node.source().begin.column) + ": key '" + key + "'";
}

// " (line: TEXT)" quoting line `line` of the file, so a syntax error shows the key it broke.
std::string source_line(const std::string& path, uint32_t line) {
  std::ifstream in(path);
  std::string text;
  for (uint32_t i = 0; i < line && std::getline(in, text); ++i) {
  }
  if (!in || text.empty()) return "";
  if (text.size() > 80) text = text.substr(0, 80) + "...";
  return " (line: " + text + ")";
}

bool power_of_two(int64_t n) {
  return n > 0 && (n & (n - 1)) == 0;
}

// "a, b, c" of `names` in sorted order (the order errors list them in).
std::string sorted_list(std::vector<std::string> names) {
  std::sort(names.begin(), names.end());
  std::string list;
  for (const std::string& n : names) list += (list.empty() ? "" : ", ") + n;
  return list;
}

// One scalar of a common key, type-checked and range-checked.
nlohmann::json scalar(const KeyDef& key, const toml::node& node, const std::string& where) {
  const std::string& k = key.name;
  if (key.type == KeyType::Int) {
    if (!node.is_integer()) throw Error(where + ": expected an integer");
    const int64_t v = *node.value<int64_t>();
    if (k == "bits" && !valid_bits(static_cast<int>(v)))
      throw Error(where + ": bits must be one of 1, 2, 3, 4, 8 (got " + std::to_string(v) + ")");
    if (k == "n" && (!power_of_two(v) || v < 2 || v > 32768))
      throw Error(where + ": fwht size must be a power of two in 2..32768 (got " +
                  std::to_string(v) + ")");
    if (k == "seed"                                                 ? v < 0
        : k == "outlier_channels" || k == "window" || k == "layers" ? v < 0
                                                                    : v <= 0)
      throw Error(where + ": out of range (got " + std::to_string(v) + ")");
    if (const int64_t limit = key_limit(key)) check_limit(where, "value", v, limit);
    return v;
  }
  if (key.type == KeyType::Double) {
    if (!node.is_number()) throw Error(where + ": expected a number");
    const double v = *node.value<double>();
    if (!(v >= 0.0) || (k == "clip" && (v <= 0.0 || v > 1.0)))
      throw Error(where + ": out of range (got " + std::to_string(v) + ")");
    return v;
  }
  if (key.type == KeyType::Bool) {
    if (!node.is_boolean()) throw Error(where + ": expected true or false");
    return *node.value<bool>();
  }
  if (!node.is_string()) throw Error(where + ": expected a string");
  const std::string v = *node.value<std::string>();
  if (k == "op" && !find_op_keys(v)) {
    std::vector<std::string> backend;
    std::string studies;
    for (const OpKeys& op : op_keys())
      if (op.study)
        studies += ", " + op.op;
      else
        backend.push_back(op.op);
    throw Error(where + ": unknown op '" + v + "' (known: " + sorted_list(backend) + studies + ")");
  }
  if (!key.choices.empty() &&
      std::find(key.choices.begin(), key.choices.end(), v) == key.choices.end())
    throw Error(where + ": '" + v + "' is not one of " + sorted_list(key.choices));
  return v;
}

std::string name_part(const KeyDef& key, const nlohmann::json& v) {
  const std::string value = v.is_string() ? v.get<std::string>() : v.dump();
  if (!key.study) return key.prefix + value;
  // A study's own key: its name then the value ("pfn1"); a path by its file stem.
  if (key.type == KeyType::Path) return std::filesystem::path(value).stem().string();
  return key.name + value;
}

std::vector<std::string> strings(const toml::node& node, const std::string& where) {
  std::vector<std::string> out;
  const toml::array* arr = node.as_array();
  if (!arr) throw Error(where + ": expected an array of strings");
  for (const toml::node& e : *arr) {
    if (!e.is_string()) throw Error(where + ": expected an array of strings");
    out.push_back(*e.value<std::string>());
  }
  return out;
}

// The shape rules docs/spec.md needs, checked once the sweep is expanded (synthetic shapes are
// known here; a recording's shapes are checked by the op itself when the case runs).
// `key_at` holds "FILE:LINE:COL" of each key of the [[case]] table.
void check_case(const ScenarioCase& c, const std::map<std::string, std::string>& key_at) {
  const auto where = [&](const std::string& key) {
    const auto it = key_at.find(key);
    return (it != key_at.end() ? it->second : c.where) + ": key '" + key + "'";
  };
  const std::string op = c.params.value("op", "");
  const int64_t head_dim = c.params.value("head_dim", int64_t{128});
  const int64_t heads = c.params.value("heads", int64_t{8});
  const int64_t g = c.params.value("head_group", int64_t{4});
  const std::string rotation = c.params.value("rotation", std::string("key_grouped"));
  const bool synthetic = c.input == "synthetic";
  if (synthetic) {
    // Each key is within its limit; together they must not ask for more than kMaxElements.
    const int64_t tokens = c.params.value("tokens", int64_t{128});
    const int64_t widest = std::max({heads * head_dim, c.params.value("hidden", int64_t{256}),
                                     c.params.value("q_heads", int64_t{0}) * head_dim});
    if (tokens > kMaxElements / widest)
      throw Error(where("tokens") + ": tokens x heads x head_dim (or x hidden) = " +
                  std::to_string(tokens) + " x " + std::to_string(widest) +
                  " exceeds the limit " + std::to_string(kMaxElements) + " values");
  }
  const bool grouped = op == "rotate_k" || (op == "rotate_quantize" && rotation == "key_grouped");
  if (synthetic && grouped && (heads % g != 0 || !power_of_two(g * head_dim)))
    throw Error(where("head_group") + ": head_group " + std::to_string(g) + " must divide heads " +
                std::to_string(heads) + " and head_group * head_dim " +
                std::to_string(g * head_dim) + " must be a power of two (docs/spec.md §2)");
  if (synthetic && (op == "rotate_v" || (op == "rotate_quantize" && rotation == "per_head")) &&
      !power_of_two(head_dim))
    throw Error(where("head_dim") + ": " + std::to_string(head_dim) +
                " is not a power of two (docs/spec.md §2)");
  if (op == "attention_decode" && c.params.contains("q_heads") && synthetic &&
      c.params["q_heads"].get<int64_t>() % heads != 0)
    throw Error(where("q_heads") + ": " + std::to_string(c.params["q_heads"].get<int64_t>()) +
                " is not a multiple of heads " + std::to_string(heads) + " (grouped-query)");
  if (op == "expert_statistics" &&
      c.params.value("top_k", int64_t{2}) > c.params.value("experts", int64_t{8}))
    throw Error(where("top_k") + ": exceeds experts");
  if (c.params.value("gate", std::string()) == "tolerance" && op != "attention_decode")
    throw Error(where("gate") + ": gate = \"tolerance\" applies to op attention_decode only (" +
                op + " is bit-exact: gate = \"exact\" or \"none\")");
  if (op == "method" && !c.params.contains("method"))
    throw Error(where("method") + ": op = \"method\" needs a method");
  // A study's own keys belong to the ops whose table lists them.
  const OpKeys* keys = find_op_keys(op);
  const auto declares = [&](const std::string& key) { return keys && keys->reads(key); };
  for (const auto& [key, value] : c.params.items())
    if (find_key_def(key)->study && !declares(key)) {
      std::string ops;
      for (const OpKeys& o : op_keys())
        if (o.reads(key)) ops += (ops.empty() ? "" : ", ") + o.op;
      throw Error(where(key) + ": applies to op " + ops + " only (this case's op is '" + op + "')");
    }
  if (c.input == "model") {
    if (!declares("model"))
      throw Error(where("input") +
                  ": input = \"model\" is for study ops that read a model "
                  "(op '" +
                  op + "' does not)");
    for (const char* key : {"model", "tokenizer", "text"})
      if (!c.params.contains(key))
        throw Error(where(key) +
                    ": input = \"model\" needs keys model, tokenizer and text "
                    "(llama2.c checkpoint, tokenizer, text file)");
  }
}

// Layers a recording holds for `tensor` (layers.{i}.TENSOR for i = 0, 1, ... while present).
std::vector<nlohmann::json> recording_layers(const std::string& file, const std::string& tensor,
                                             const std::string& where) {
  std::optional<SafetensorsFile> opened;
  try {
    opened.emplace(SafetensorsFile::open(file));
  } catch (const Error& e) {
    throw Error(where + ": " + e.what());
  }
  const SafetensorsFile& recording = *opened;
  std::vector<nlohmann::json> layers;
  for (std::string name; recording.has(name = "layers." + std::to_string(layers.size()) + "." +
                                            tensor);) {
    // An empty dimension (0 tokens, heads or head_dim) leaves the ops nothing to work on.
    const Shape shape = recording.view(name).shape;
    if (std::find(shape.begin(), shape.end(), 0) != shape.end())
      throw Error(where + ": recording '" + file + "': tensor '" + name + "' has shape " +
                  shape_string(shape) + "; every dimension must be >= 1");
    layers.push_back(static_cast<int64_t>(layers.size()));
  }
  if (layers.empty())
    throw Error(where + ": recording '" + file + "' has no tensor 'layers.0." + tensor + "'");
  return layers;
}

// The recording tensor a case reads (layers.{i}.TENSOR): a backend op's `tensor` (its default by
// op, harness/scenario/case_keys.cpp), else `tensor` or k.
std::string recording_tensor(const nlohmann::json& params) {
  const std::string op = params.value("op", "");
  const OpKeys* keys = find_op_keys(op);
  if (keys && !keys->study) return std::get<BackendCase>(parse_case_keys(op, params)).tensor;
  return params.value("tensor", std::string("k"));
}

bool variable_char(char ch, bool first) {
  return ch == '_' || std::isalpha(static_cast<unsigned char>(ch)) ||
         (!first && std::isdigit(static_cast<unsigned char>(ch)));
}

// The file's text with `${NAME}` replaced inside double-quoted strings (comments and keys are
// left alone), the value escaped for a TOML basic string. Lines keep their numbers.
std::string substitute_variables(const std::string& path, const std::string& text,
                                 const ScenarioVars& vars) {
  std::string out;
  out.reserve(text.size());
  bool quoted = false, comment = false;
  uint32_t line = 1, column = 1;
  for (size_t i = 0; i < text.size(); ++i, ++column) {
    const char ch = text[i];
    if (ch == '\n') {
      quoted = comment = false;
      ++line;
      column = 0;
    } else if (!quoted && ch == '#') {
      comment = true;
    } else if (!comment && ch == '"' && (i == 0 || text[i - 1] != '\\')) {
      quoted = !quoted;
    } else if (quoted && ch == '$' && i + 1 < text.size() && text[i + 1] == '{') {
      size_t end = i + 2;
      while (end < text.size() && variable_char(text[end], end == i + 2)) ++end;
      const std::string name = text.substr(i + 2, end - i - 2);
      if (name.empty() || end >= text.size() || text[end] != '}')
        throw Error(path + ":" + std::to_string(line) + ":" + std::to_string(column) +
                    ": '${' must start a variable ${NAME} (letters, digits, '_')");
      const auto value = vars.find(name);
      if (value == vars.end())
        throw Error(path + ":" + std::to_string(line) + ":" + std::to_string(column) +
                    ": variable '" + name + "' is not set (give --var " + name + "=VALUE)");
      for (const char v : value->second) {
        if (v == '\\' || v == '"') out += '\\';
        out += v;
      }
      column += static_cast<uint32_t>(end - i);
      i = end;
      continue;
    }
    out += ch;
  }
  return out;
}

}  // namespace

Scenario load_scenario(const std::string& path, const ScenarioVars& vars) {
  if (std::error_code ec; std::filesystem::is_directory(path, ec))
    throw Error(path + ": is a directory, not a scenario file");
  std::ifstream file(path, std::ios::binary);
  if (!file) throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
  const std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  toml::table root;
  try {
    root = toml::parse(substitute_variables(path, text, vars), path);
  } catch (const toml::parse_error& e) {
    const toml::source_position at = e.source().begin;
    throw Error(path + ":" + std::to_string(at.line) + ":" + std::to_string(at.column) + ": " +
                std::string(e.description()) + source_line(path, at.line));
  }
  Scenario scenario;
  scenario.path = path;
  scenario.name = std::filesystem::path(path).stem().string();
  const std::filesystem::path folder = std::filesystem::path(path).parent_path();
  for (const auto& [key, node] : root) {
    const std::string k(key.str());
    if (k != "scenario" && k != "case")
      throw Error(at(path, node, k) + ": unknown top-level key (expected [scenario] or [[case]])");
  }
  if (const toml::node* sc = root.get("scenario")) {
    const toml::table* t = sc->as_table();
    if (!t) throw Error(at(path, *sc, "scenario") + ": expected a table");
    for (const auto& [key, node] : *t) {
      const std::string k(key.str()), where = at(path, node, k);
      if (k == "backends") {
        scenario.backends = strings(node, where);
      } else if (k == "name" || k == "description" || k == "reference") {
        if (!node.is_string()) throw Error(where + ": expected a string");
        (k == "name"          ? scenario.name
         : k == "description" ? scenario.description
                              : scenario.reference) = *node.value<std::string>();
      } else {
        throw Error(where + ": unknown key in [scenario] (name, description, backends, reference)");
      }
    }
  }
  const toml::node* case_node = root.get("case");
  if (!case_node) return scenario;
  const toml::array* cases = case_node->as_array();
  if (!cases) throw Error(at(path, *case_node, "case") + ": expected [[case]] tables");
  std::set<std::string> names;
  for (const toml::node& cnode : *cases) {
    const toml::table* table = cnode.as_table();
    if (!table) throw Error(at(path, cnode, "case") + ": expected a table");
    // Keys in file order: toml++ iterates them sorted by name.
    std::vector<std::pair<std::string, const toml::node*>> keys;
    for (const auto& [key, node] : *table) keys.emplace_back(std::string(key.str()), &node);
    std::sort(keys.begin(), keys.end(), [](const auto& a, const auto& b) {
      return a.second->source().begin < b.second->source().begin;
    });
    ScenarioCase base;
    base.where = path + ":" + std::to_string(cnode.source().begin.line);
    std::string prefix;
    std::vector<std::pair<std::string, std::vector<nlohmann::json>>> sweeps;
    std::map<std::string, std::string> key_at;
    for (const auto& [k, node] : keys) {
      const std::string where = at(path, *node, k);
      key_at[k] = path + ":" + std::to_string(node->source().begin.line) + ":" +
                  std::to_string(node->source().begin.column);
      const KeyDef* def = find_key_def(k);
      if (!def) throw Error(where + ": unknown key in [[case]]");
      if (k == "backends") {
        base.backends = strings(*node, where);
      } else if (k == "name") {
        if (!node->is_string()) throw Error(where + ": expected a string");
        prefix = *node->value<std::string>();
      } else if (k == "input") {
        if (!node->is_string()) throw Error(where + ": expected a string");
        base.input = *node->value<std::string>();
        // "model": a llama2.c recording made from keys model, tokenizer, text (studies only).
        if (base.input != "synthetic" && base.input != "model") {
          const std::filesystem::path file = folder / base.input;
          if (std::error_code ec; !std::filesystem::is_regular_file(file, ec))
            throw Error(where + ": recording '" + file.string() + "' not found" + reason(ec));
          base.input = file.string();
        }
      } else if (const toml::array* arr = node->as_array()) {
        if (arr->empty()) throw Error(where + ": empty sweep");
        std::vector<nlohmann::json> values;
        for (const toml::node& e : *arr)
          values.push_back(def->study ? study_scalar(*def, e, where, folder)
                                      : scalar(*def, e, where));
        sweeps.emplace_back(k, std::move(values));
      } else {
        base.params[k] = def->study ? study_scalar(*def, *node, where, folder)
                                    : scalar(*def, *node, where);
      }
    }
    const auto swept = [&](const std::string& key) {
      return std::any_of(sweeps.begin(), sweeps.end(),
                         [&](const auto& s) { return s.first == key; });
    };
    if (!base.params.contains("op") && !swept("op"))
      throw Error(at(path, cnode, "op") + ": [[case]] needs an op");
    // A recording without `layers` means every layer it holds: an implicit last sweep.
    const std::string base_op = base.params.value("op", std::string());
    // Study ops read every layer themselves.
    const OpKeys* base_keys = find_op_keys(base_op);
    if (base.input != "synthetic" && base.input != "model" && !(base_keys && base_keys->study) &&
        !base.params.contains("layers") && !swept("layers")) {
      ScenarioCase probe = base;
      for (const auto& [key, values] : sweeps) probe.params[key] = values.front();
      const std::string tensor =
          base_op == "expert_statistics" ? "experts.ids" : recording_tensor(probe.params);
      sweeps.emplace_back("layers",
                          recording_layers(base.input, tensor, at(path, cnode, "layers")));
    }
    // The sweeps' product, checked before a single case is built.
    int64_t expanded = 1;
    for (const auto& [key, values] : sweeps) {
      expanded *= static_cast<int64_t>(values.size());
      if (expanded + static_cast<int64_t>(scenario.cases.size()) > kMaxCases)
        throw Error(at(path, cnode, key) + ": the sweeps expand the scenario beyond " +
                    std::to_string(kMaxCases) + " cases, the limit (split it into several " +
                    "scenarios or shard it)");
    }
    std::vector<size_t> index(sweeps.size(), 0);
    while (true) {
      ScenarioCase c = base;
      // Stable name: the case's name (or its op), then one part per swept key in file order.
      std::vector<std::string> parts;
      if (!prefix.empty())
        parts.push_back(prefix);
      else if (!base_op.empty())
        parts.push_back(base_op);
      for (size_t i = 0; i < sweeps.size(); ++i) {
        c.params[sweeps[i].first] = sweeps[i].second[index[i]];
        parts.push_back(name_part(*find_key_def(sweeps[i].first), sweeps[i].second[index[i]]));
      }
      for (const std::string& part : parts) c.name += (c.name.empty() ? "" : "/") + part;
      check_case(c, key_at);
      c.op = c.params["op"].get<std::string>();
      c.keys = parse_case_keys(c.op, c.params);
      if (!names.insert(c.name).second)
        throw Error(base.where + ": key 'name': case name '" + c.name +
                    "' is used twice (give the case a distinct name)");
      scenario.cases.push_back(std::move(c));
      size_t i = sweeps.size();
      while (i > 0 && ++index[i - 1] == sweeps[i - 1].second.size()) index[--i] = 0;
      if (i == 0) break;
    }
  }
  return scenario;
}

}  // namespace kvq
