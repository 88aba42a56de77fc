// `kvq ppl`: perplexity of a llama2.c model over a text with the KV cache passed through
// methods on append (docs/spec.md §9), the fp32 cache as baseline; prints a table and writes a run
// with one case per (method, bits) to the results store.
#include <boost/program_options.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "harness/cli/cli_options.h"
#include "harness/cli/commands.h"
#include "harness/io/sha256.h"
#include "harness/model/llama2.h"
#include "harness/model/perplexity.h"
#include "harness/model/tokenizer.h"
#include "harness/store/store.h"
#include "reference/error.h"
#include "reference/methods.h"

namespace kvq {
namespace {

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

struct PplCase {
  MethodParams params;
  PplResult result;
};

}  // namespace

int cmd_ppl(int argc, char** argv) {
  namespace po = boost::program_options;
  Llama2Inputs inputs;
  std::string methods_arg, bits_arg = "2,4", backend = "ref", db = "results/kvq.db";
  int64_t window = 256, max_tokens = -1;
  bool quiet = false;
  po::options_description options(
      "kvq ppl --model M --tokenizer T --text FILE --method M[,M...] --bits B[,B...] "
      "[--backend ref] [--window W] [--max-tokens N] [--db PATH]\n"
      "Perplexity with the KV cache passed through each method at each bit width, and with the "
      "fp32 cache (docs/spec.md §9)");
  add_llama2_input_options(options, inputs)(
      "method", po::value(&methods_arg)->required(),
      "methods, comma-separated: fp32, rtn, kivi, kvquant, rotatekv, kvsink+kvquant, akvq-vl")(
      "bits", po::value(&bits_arg)->default_value(bits_arg), "bit widths, comma-separated")(
      "backend", po::value(&backend)->default_value(backend),
      "backend of the method (the incremental cache exists for ref)")(
      "window", po::value(&window)->default_value(window), "W: chunks of BOS + W-1 tokens")(
      "max-tokens", po::value(&max_tokens)->default_value(max_tokens),
      "use only the first N text tokens (-1: all)")(
      "db", po::value(&db)->default_value(db), "results database (SQLite); empty: do not write")(
      "quiet", po::bool_switch(&quiet), "no progress on stderr");
  if (!parse_subcommand_options(argc, argv, options, "ppl: ")) return 0;  // --help
  // methods.h's IncrementalCache is the reference definition; no backend accelerates it yet.
  if (backend != "ref")
    throw Error("ppl: --backend " + backend +
                " has no incremental (per-token) cache; perplexity runs on backend ref");

  // Every option is checked here, before the model runs: a mistake found after the baseline
  // would cost its whole time and leave a run `incomplete`.
  if (split_list(methods_arg).empty()) throw Error("ppl: --method is empty (give one or more)");
  if (split_list(bits_arg).empty()) throw Error("ppl: --bits is empty (give one or more)");
  if (window < 2) throw Error("ppl: --window " + std::to_string(window) + " must be >= 2");
  if (max_tokens < -1 || max_tokens == 0)
    throw Error("ppl: --max-tokens " + std::to_string(max_tokens) + " must be >= 1 (-1: all)");
  std::vector<MethodParams> cases;
  for (const std::string& name : split_list(methods_arg)) {
    const Method method = parse_method(name);
    if (method == Method::Fp32) continue;  // the baseline always runs
    for (const std::string& b : split_list(bits_arg)) {
      MethodParams p;
      p.method = method;
      try {
        p.bits = std::stoi(b);
      } catch (const std::exception&) {
        throw Error("ppl: --bits value '" + b + "' is not an integer");
      }
      if (!valid_bits(p.bits))
        throw Error("ppl: --bits " + b + " is not one of 1, 2, 3, 4, 8 (docs/spec.md §3)");
      for (const MethodParams& q : cases)
        if (q.method == p.method && q.bits == p.bits)
          throw Error("ppl: " + name + " at --bits " + b + " is asked for twice");
      cases.push_back(p);
    }
  }

  const Model model = Model::load(inputs.model);
  const Tokenizer tokenizer = Tokenizer::load(inputs.tokenizer);
  require_matching_tokenizer(model, tokenizer);
  if (window > model.config().seq_len)
    throw Error("ppl: --window " + std::to_string(window) + " exceeds the seq_len " +
                std::to_string(model.config().seq_len) + " of " + inputs.model);
  std::vector<int32_t> ids = tokenizer.encode(read_text_file(inputs.text));
  if (max_tokens >= 0 && static_cast<int64_t>(ids.size()) > max_tokens)
    ids.resize(static_cast<size_t>(max_tokens));
  if (ids.empty()) throw Error("ppl: " + inputs.text + " gives no tokens");
  const auto chunks = ppl_chunks(ids, window);
  std::fprintf(stderr, "ppl: %s on %s: %zu tokens, %zu chunks of BOS + up to %lld\n",
               model.name().c_str(), inputs.text.c_str(), ids.size(), chunks.size(),
               static_cast<long long>(window - 1));

  const auto progress_for = [&](const std::string& label) -> PplProgress {
    if (quiet || chunks.size() < 8) return {};
    return [label, step = std::max<int64_t>(1, static_cast<int64_t>(chunks.size()) / 4)](
               int64_t done, int64_t total) {
      if (done % step == 0 || done == total)
        std::fprintf(stderr, "ppl %s: %lld/%lld chunks\n", label.c_str(),
                     static_cast<long long>(done), static_cast<long long>(total));
    };
  };

  const ModelConfig& config = model.config();
  MethodParams fp32;
  fp32.method = Method::Fp32;
  std::vector<PplCase> results;
  results.push_back(
      {fp32, perplexity(
                 model, chunks, [&] { return std::make_unique<Fp32KvCache>(config.n_layers); },
                 progress_for("fp32"))});
  for (const MethodParams& p : cases) {
    // Whole-sequence decisions (rotatekv permutation, KVSink l*, C*) come from the fp32
    // activations of the first chunk.
    const Calibration calibration = calibrate_for_ppl(model, chunks.front(), p);
    const std::string label = std::string(method_name(p.method)) + " b" + std::to_string(p.bits);
    results.push_back(
        {p, perplexity(
                model, chunks, [&] { return make_method_cache(config, p, calibration); },
                progress_for(label))});
  }

  std::printf("%-16s %5s %10s %10s %10s %10s %8s\n", "method", "bits", "bits/elem", "mean NLL",
              "PPL", "vs fp32", "time s");
  const double base = results.front().result.ppl();
  for (const PplCase& c : results) {
    const bool is_fp32 = c.params.method == Method::Fp32;
    std::printf("%-16s %5s %10.3f %10.4f %10.3f %+9.2f%% %8.2f\n", method_name(c.params.method),
                is_fp32 ? "32" : std::to_string(c.params.bits).c_str(), c.result.bits_per_element(),
                c.result.mean_nll(), c.result.ppl(), 100.0 * (c.result.ppl() / base - 1.0),
                c.result.seconds);
  }

  if (!db.empty()) {
    Store store(db);
    const int64_t run = store.begin_run(collect_run_info("", command_line(argc, argv)));
    const std::string text_hash = sha256_file(inputs.text);
    for (const PplCase& c : results) {
      const bool is_fp32 = c.params.method == Method::Fp32;
      const std::string method = method_name(c.params.method);
      const int bits = is_fp32 ? 32 : c.params.bits;
      CaseRecord record;
      record.name = "ppl/" + model.name() + "/" + method + "/b" + std::to_string(bits) + "/W" +
                    std::to_string(window);
      record.op = method;
      record.params_json = nlohmann::json{
          {"study", "ppl"},
          {"model", inputs.model},
          {"tokenizer", inputs.tokenizer},
          {"text", inputs.text},
          {"text_sha256", text_hash},
          {"method", method},
          {"bits", bits},
          {"window", window},
          {"max_tokens", max_tokens},
          {"tokens", c.result.predicted},
          {"chunks",
           c.result.chunks}}.dump();
      record.repro = "kvq ppl --model " + inputs.model + " --tokenizer " + inputs.tokenizer +
                     " --text " + inputs.text + " --method " + method +
                     (is_fp32 ? "" : " --bits " + std::to_string(bits)) + " --window " +
                     std::to_string(window) +
                     (max_tokens >= 0 ? " --max-tokens " + std::to_string(max_tokens) : "");
      const auto measure = [&](const char* metric, double value, const char* unit) {
        Measurement m;
        m.backend = backend;
        m.metric = metric;
        m.value = value;
        m.unit = unit;
        return m;
      };
      store.add_case(run, record, {},
                     {measure("ppl", c.result.ppl(), ""), measure("nll", c.result.mean_nll(), ""),
                      measure("bits_per_element", c.result.bits_per_element(), "bits"),
                      measure("time", c.result.seconds, "s")});
    }
    store.finish_run(run, "complete");
    std::fprintf(stderr, "ppl: run %lld written to %s\n", static_cast<long long>(run), db.c_str());
  }
  return 0;
}

}  // namespace kvq
