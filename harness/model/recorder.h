// Records a llama2.c model's per-layer activations over a token sequence (fp32 cache) and
// writes them in the docs/design.md recording schema: layers.{i}.k_pre_rope, .k, .v [T, H_kv, d],
// .q [T, H_q, d], .hidden_in [T, dim], fp32, with metadata (model, shapes, rope_theta, token
// ids as a JSON list, text).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "harness/model/llama2.h"
#include "reference/tensor.h"

namespace kvq {

struct LayerRecording {
  std::vector<float> hidden_in, q, k_pre_rope, k, v;  // row-major, token-major
};

struct Recording {
  ModelConfig config;
  std::string model;  // model name (checkpoint file stem)
  std::vector<int32_t> tokens;
  std::string text;  // what the tokens decode to
  std::vector<LayerRecording> layers;
  int64_t size() const { return static_cast<int64_t>(tokens.size()); }
};

// Runs `tokens` (at positions 0..T-1, T <= seq_len) through the model token by token with the
// fp32 cache and keeps every layer's activations. `progress(done, total)` is called now and then.
Recording record_activations(const Model& model, std::span<const int32_t> tokens,
                             const std::function<void(int64_t, int64_t)>& progress = {});

// Writes the recording as safetensors (atomically, harness/io/safetensors.h), every tensor as
// `dtype`: F32, or F16 (round to nearest even; a value beyond fp16's range is an error naming the
// tensor and index), which halves the file for a recording shipped in data/.
void write_recording(const std::string& path, const Recording& recording,
                     DType dtype = DType::F32);

}  // namespace kvq
