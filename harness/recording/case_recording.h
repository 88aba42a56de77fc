// The recording a study case reads (harness/studies/studies.h): a .safetensors path as it is, or
// one made for the case and cached on disk, so the cases of a sweep share one synthesis or one
// model run.
//   input = "PATH.safetensors": that path.
//   input = "synthetic": `kvq synth` of the case's keys (seed, tokens, heads, q_heads, head_dim,
//     hidden, experts, top_k, layers; SynthParams defaults for the others).
//   input = "model": a llama2.c recording of BOS + the first tokens - 1 tokens of `text` through
//     `model` with `tokenizer` (keys; paths resolved by the scenario loader).
// Cache: $KVQ_CACHE if set, else <temp dir>/kvq-cache-<uid>/; the file name is the sha256 of the
// source's identity (every key that changes the content, path, size and mtime of the
// model/tokenizer/text files and of the kvq binary, a format version); written atomically.
// "recording <source> -> <path>" goes to stderr when a recording is made.
#pragma once

#include <string>

#include "harness/recording/synth.h"
#include "harness/scenario/scenario.h"

namespace kvq {

// `k` is the case's struct (case_keys<SinksCase>(c), ...). Throws kvq::Error naming the case
// (c.where) and what failed.
std::string case_recording(const ScenarioCase& c, const RecordingKeys& k);

// The synthesis input = "synthetic" makes of the case's keys (SynthParams defaults else).
SynthParams case_synth_params(const RecordingKeys& k);
// The cache folder case_recording() writes to (created when missing).
std::string recording_cache_dir();

}  // namespace kvq
