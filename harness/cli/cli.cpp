#include "harness/cli/cli.h"

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include "backends/backend.h"
#include "harness/cli/commands.h"
#include "harness/store/store.h"
#include "reference/error.h"

namespace kvq {

namespace {

// Adding a subcommand touches this table and its own cmd_<name>.cpp (STYLE.md rule 7).
constexpr Subcommand kSubcommands[] = {
    {"run", "run a scenario on every selected backend, compare with the reference, write SQLite",
     "kvq run scenarios/demo.toml --db results/kvq.db --backends ref,avx512", cmd_run},
    {"gate", "like run; exit status 1 when any check fails, with a summary of each failure",
     "kvq gate scenarios/ci.toml", cmd_gate},
    {"backends", "list the backends available here and why others are not", "kvq backends",
     cmd_backends},
    {"apply",
     "apply a method of docs/spec.md §8 to every layer of a recording, write codes + dequant",
     "kvq apply --method rotatekv --bits 2 --in rec.safetensors --out applied.safetensors",
     cmd_apply},
    {"report", "named queries over the results database (table, CSV or JSON)",
     "kvq report failing --db results/kvq.db --format csv", cmd_report},
    {"bench", "measure a scenario's ops with Google Benchmark (GB/s, fraction of memcpy) to SQLite",
     "kvq bench scenarios/perf.toml --db results/kvq.db", cmd_bench},
    {"synth", "write a synthetic recording with planted sinks, outliers and Super Experts",
     "kvq synth --out synth.safetensors --seed 1", cmd_synth},
    {"record", "run a llama2.c model over text and record its activations",
     "kvq record --model data/stories260K.bin --tokenizer data/tok512.bin "
     "--text data/tinystories-sample.txt --tokens 256 --out rec.safetensors",
     cmd_record},
    {"ppl", "perplexity of a llama2.c model with its KV cache passed through a method",
     "kvq ppl --model data/stories260K.bin --tokenizer data/tok512.bin "
     "--text data/tinystories-sample.txt --method rotatekv --bits 2",
     cmd_ppl},
    {"merge", "combine results databases (shards, machines) into one; repeated runs skipped",
     "kvq merge shard0.db shard1.db -o all.db", cmd_merge},
    {"sinks", "score sink predictors (PFN, massive, pivot, KVSink) against attention-mass truth",
     "kvq sinks synth.safetensors --format table --db results/kvq.db", cmd_sinks},
    {"experts", "list a MoE recording's Super Experts and the massive activations after them",
     "kvq experts data/tiny-moe.safetensors --format json", cmd_experts},
};

void print_usage(std::FILE* out) {
  std::fprintf(out,
               "kvq: bit-exact low-bit KV-cache algorithms, their backends and cross-checks\n\n"
               "usage: kvq SUBCOMMAND [options]     (kvq help SUBCOMMAND, or kvq SUBCOMMAND "
               "--help, for its options; kvq --version)\n\n");
  for (const Subcommand& sub : kSubcommands)
    std::fprintf(out, "  %-9s %s\n            e.g. %s\n", sub.name, sub.summary, sub.example);
  std::fprintf(out,
               "\nExit status: 0 success, 1 a gate found failing checks, 2 bad input (the error "
               "names the file, line, key or tensor).\n");
}

// Runs record the GPU they ran on: the detail of an available GPU backend ("" when none).
std::string registry_gpu_name() {
  for (const BackendEntry& entry : backend_registry())
    if (entry.name == "cuda" && entry.available) return entry.detail;
  return "";
}

void print_error(std::string message) {
  for (char& c : message)
    if (c == '\n' || c == '\r') c = ' ';
  std::fflush(stdout);
  std::fprintf(stderr, "kvq: %s\n", message.c_str());
}

}  // namespace

std::span<const Subcommand> subcommands() {
  return kSubcommands;
}

std::string version_string(const char* version, const char* revision) {
  return std::string("kvq ") + version + " (git " + revision + ")";
}

int cli_main(int argc, char** argv, const std::string& version) {
  set_gpu_name_provider(&registry_gpu_name);
  if (argc < 2) {
    print_usage(stderr);
    return 2;
  }
  if (!std::strcmp(argv[1], "--version")) {
    std::printf("%s\n", version.c_str());
    return 0;
  }
  const bool help_sub = !std::strcmp(argv[1], "help") && argc > 2;
  if (!help_sub && (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
                    !std::strcmp(argv[1], "help"))) {
    print_usage(stdout);
    return 0;
  }
  // An unknown cap would silently turn every AVX backend off (backends/avx/avx_backend.h).
  if (const char* isa = std::getenv("KVQ_MAX_ISA"); isa && *isa) {
    std::string v = isa;
    for (char& c : v) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (v != "avx512" && v != "avx2" && v != "scalar" && v != "ref" && v != "none") {
      print_error(std::string("environment KVQ_MAX_ISA=") + isa +
                  " is not one of avx512, avx2, scalar");
      return 2;
    }
  }
  // `kvq help SUB` is `kvq SUB --help`.
  char help_flag[] = "--help";
  char* help_argv[] = {argv[0], help_sub ? argv[2] : nullptr, help_flag, nullptr};
  if (help_sub) {
    argc = 3;
    argv = help_argv;
  }
  for (const Subcommand& sub : kSubcommands) {
    if (std::strcmp(argv[1], sub.name) != 0) continue;
    // STYLE.md rule 5: every error is one line "kvq: MESSAGE" on stderr and exit status 2.
    try {
      return sub.run(argc - 1, argv + 1);
    } catch (const Error& e) {
      print_error(e.what());
    } catch (const std::exception& e) {
      print_error(std::string("internal error in '") + sub.name + "': " + e.what());
    }
    return 2;
  }
  std::fprintf(stderr, "kvq: unknown subcommand '%s'; one of:", argv[1]);
  for (const Subcommand& sub : kSubcommands) std::fprintf(stderr, " %s", sub.name);
  std::fprintf(stderr, " (kvq --help)\n");
  return 2;
}

}  // namespace kvq
