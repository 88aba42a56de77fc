// `kvq synth --out REC.safetensors [--seed S] [--layers L] [--tokens T] [--heads H]
// [--kv-heads Hkv] [--head-dim d] [--hidden D] [--experts E] [--top-k k] [--image-tokens N]
// [--text-attention NATS]`:
// writes a synthetic recording with planted ground truth (harness/recording/synth.h).
#include <boost/program_options.hpp>
#include <cstdio>
#include <string>

#include "harness/cli/commands.h"
#include "harness/cli/cli_options.h"
#include "harness/io/output_path.h"
#include "harness/recording/synth.h"
#include "reference/error.h"

namespace kvq {

int cmd_synth(int argc, char** argv) {
  namespace po = boost::program_options;
  SynthParams p;
  std::string out;
  po::options_description options(
      "kvq synth --out REC.safetensors [--seed S] [--layers L] [--tokens T] [--heads H] "
      "[--kv-heads Hkv] [--head-dim d] [--hidden D] [--experts E] [--top-k k] "
      "[--image-tokens N] [--text-attention NATS]\n"
      "Writes a synthetic recording (docs/design.md schema), deterministic from the seed, with "
      "planted outlier channels, massive activations, attention sinks and Super Experts; the "
      "ground truth is in its metadata");
  options.add_options()("help,h", "this help")("out", po::value(&out)->required(),
                                               "output safetensors")(
      "seed", po::value(&p.seed)->default_value(p.seed), "PRNG seed")(
      "layers", po::value(&p.layers)->default_value(p.layers), "layers L (>= 3)")(
      "tokens", po::value(&p.tokens)->default_value(p.tokens), "tokens T (>= 80)")(
      "heads", po::value(&p.heads)->default_value(p.heads), "query heads H")(
      "kv-heads", po::value(&p.kv_heads)->default_value(p.kv_heads), "KV heads (divides H)")(
      "head-dim", po::value(&p.head_dim)->default_value(p.head_dim), "head dimension d (even)")(
      "hidden", po::value(&p.hidden)->default_value(p.hidden), "hidden size D")(
      "experts", po::value(&p.experts)->default_value(p.experts), "experts E (0: dense)")(
      "top-k", po::value(&p.top_k)->default_value(p.top_k), "experts per token")(
      "image-tokens", po::value(&p.image_tokens)->default_value(p.image_tokens),
      "image tokens, a block from token 8")(
      "text-attention", po::value(&p.text_attention)->default_value(p.text_attention),
      "extra logit of text over image tokens in layers < L/2 (AKVQ-VL's text-salient "
      "attention; needs --head-dim >= 16)");
  if (!parse_subcommand_options(argc, argv, options, "synth: ")) return 0;  // --help
  require_replaceable(out);
  const SynthRecording rec = synthesize(p);
  write_recording(out, rec);
  std::printf(
      "%s: %zu tensors; sinks %s, massive channels %s at layer >= %lld, super experts "
      "%s\n",
      out.c_str(), rec.tensors.size(), rec.metadata.at("sink_tokens").c_str(),
      rec.metadata.at("massive_channels").c_str(),
      static_cast<long long>(rec.truth.massive_layer), rec.metadata.at("super_experts").c_str());
  return 0;
}

}  // namespace kvq
