// `kvq record`: runs a llama2.c model over the start of a text file and writes its per-layer
// activations in the docs/design.md recording schema (harness/model/recorder.h).
#include <boost/program_options.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "harness/cli/cli_options.h"
#include "harness/cli/commands.h"
#include "harness/model/llama2.h"
#include "harness/model/recorder.h"
#include "harness/model/tokenizer.h"
#include "harness/io/output_path.h"
#include "reference/error.h"

namespace kvq {

int cmd_record(int argc, char** argv) {
  namespace po = boost::program_options;
  Llama2Inputs inputs;
  std::string out_path, dtype = "f32";
  int64_t tokens = 0;
  po::options_description options(
      "kvq record --model M --tokenizer T --text FILE --tokens N --out REC.safetensors\n"
      "Records BOS followed by the first N-1 tokens of FILE through a llama2.c model (fp32 "
      "cache)");
  add_llama2_input_options(options, inputs)("tokens", po::value(&tokens)->required(),
                                            "tokens to record, BOS included (<= seq_len)")(
      "out", po::value(&out_path)->required(), "output .safetensors")(
      "dtype", po::value(&dtype)->default_value(dtype),
      "f32, or f16 (half the size; every value rounded to nearest even)");
  if (!parse_subcommand_options(argc, argv, options, "record: ")) return 0;  // --help

  check_output_path("--out", out_path,
                    {{"--model", inputs.model}, {"--tokenizer", inputs.tokenizer},
                     {"--text", inputs.text}});
  if (dtype != "f32" && dtype != "f16")
    throw Error("record: --dtype '" + dtype + "': expected f32 or f16");
  const Model model = Model::load(inputs.model);
  const Tokenizer tokenizer = Tokenizer::load(inputs.tokenizer);
  require_matching_tokenizer(model, tokenizer);
  if (tokens < 1 || tokens > model.config().seq_len)
    throw Error("record: --tokens " + std::to_string(tokens) + " outside [1, seq_len = " +
                std::to_string(model.config().seq_len) + "] of " + inputs.model);
  // The recording starts with BOS, as llama2.c runs a sequence and as docs/spec.md §9 chunks do.
  std::vector<int32_t> ids = tokenizer.encode(read_text_file(inputs.text));
  ids.insert(ids.begin(), kBosId);
  if (static_cast<int64_t>(ids.size()) < tokens)
    throw Error("record: " + inputs.text + " encodes to " + std::to_string(ids.size() - 1) +
                " tokens; --tokens " + std::to_string(tokens) + " needs " +
                std::to_string(tokens - 1) + " after BOS");
  ids.resize(static_cast<size_t>(tokens));

  Recording rec = record_activations(model, ids, [](int64_t done, int64_t total) {
    std::fprintf(stderr, "record: %lld/%lld tokens\n", static_cast<long long>(done),
                 static_cast<long long>(total));
  });
  for (size_t i = 1; i < ids.size(); ++i) rec.text += tokenizer.decode(ids[i - 1], ids[i]);
  write_recording(out_path, rec, dtype == "f16" ? DType::F16 : DType::F32);
  std::printf("recorded %lld tokens x %d layers of %s into %s\n", static_cast<long long>(tokens),
              model.config().n_layers, model.name().c_str(), out_path.c_str());
  return 0;
}

}  // namespace kvq
