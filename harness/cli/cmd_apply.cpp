// `kvq apply --method M --bits B --in REC.safetensors --out OUT.safetensors [--backend B]
// [--group G] [--window R] [--clip r]`: one method applied to every layer of a recording
// (harness/recording/apply.h describes the output).
#include <boost/program_options.hpp>
#include <cstdio>
#include <string>

#include "harness/recording/apply.h"
#include "harness/cli/cli_options.h"
#include "harness/cli/commands.h"
#include "harness/io/output_path.h"
#include "reference/error.h"

namespace kvq {

int cmd_apply(int argc, char** argv) {
  namespace po = boost::program_options;
  std::string method, in, out, backend = "ref", zero_point = "float";
  int bits = 2;
  int64_t group = 128, window = -1;
  float clip = -1.0f;
  po::options_description options(
      "kvq apply --method M --bits B --in REC.safetensors --out OUT.safetensors [--backend ref] "
      "[--group G] [--window R] [--clip r] [--zero-point float|int]\n"
      "Applies a KV-cache method (docs/spec.md §8) to every layer of a recording and writes codes, "
      "scales, zeros, kept tokens and the reconstruction");
  options.add_options()("help,h", "this help")(
      "method", po::value(&method)->required(),
      "fp32, rtn, kivi, kvquant, rotatekv, kvsink+kvquant or akvq-vl")(
      "bits", po::value(&bits)->default_value(bits), "b in {1, 2, 3, 4, 8} (akvq-vl: b_lo)")(
      "in", po::value(&in)->required(), "recording (safetensors, docs/design.md schema)")(
      "out", po::value(&out)->required(), "output safetensors")(
      "backend", po::value(&backend)->default_value(backend), "backend (methods run on ref)")(
      "group", po::value(&group)->default_value(group), "G, quantization group size")(
      "window", po::value(&window)->default_value(window),
      "R recent tokens kept fp16 (-1: method default, 128 for kivi, else 0)")(
      "clip", po::value(&clip)->default_value(clip),
      "clip ratio r of K and V (-1: method default, rotatekv 0.8 at 2 bits)")(
      "zero-point", po::value(&zero_point)->default_value(zero_point), "float or int (docs/spec.md §3)");
  if (!parse_subcommand_options(argc, argv, options, "apply: ")) return 0;  // --help
  MethodParams params;
  params.method = parse_method(method);
  params.bits = bits;
  params.group = group;
  params.window = window;
  params.clip = clip;
  if (zero_point != "float" && zero_point != "int")
    throw Error("apply: --zero-point must be 'float' or 'int', got '" + zero_point + "'");
  params.zero_point = zero_point == "int" ? ZeroPoint::Int : ZeroPoint::Float;
  check_output_path("--out", out, {{"--in", in}});
  const SafetensorsFile recording = SafetensorsFile::open(in);
  const AppliedRecording applied = apply_recording(recording, params, backend);
  write_applied(out, applied, in);
  std::printf("%s b=%d G=%lld: %zu layers, K %.4f bits/element, V %.4f bits/element -> %s\n",
              method_name(params.method), bits, static_cast<long long>(group),
              applied.layers.size(), applied.k_bits_per_element, applied.v_bits_per_element,
              out.c_str());
  return 0;
}

}  // namespace kvq
