// A recording's per-layer tensors as reference/methods.h LayerTensors (k, k_pre_rope, v, q,
// hidden_in, modality), from a safetensors file or an in-memory synthetic recording, shared by
// the studies that run methods or allocations on every layer (memory, vlm).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "reference/methods.h"

namespace kvq {

class SafetensorsFile;
struct SynthRecording;

struct RecordingLayers {
  std::string source;                // path or "synthetic"
  std::vector<LayerTensors> layers;  // spans into `owned` (valid while this object lives)
  std::map<std::string, std::string> metadata;
  std::map<std::string, std::vector<float>> owned;  // node-stable storage of the spans
  std::vector<uint8_t> modality;                    // [T] (empty: all text)
  int64_t tokens() const { return layers.empty() ? 0 : layers.front().shape.tokens; }
};

// Reads layers.{i}.k, .k_pre_rope, .v, .q and .hidden_in for i = 0, 1, ... while layers.{i}.k
// exists, and `modality` when present. Throws kvq::Error naming the file and tensor on a
// missing tensor or a shape that disagrees with layer 0's.
RecordingLayers load_recording_layers(const SafetensorsFile& file);
RecordingLayers load_recording_layers(const SynthRecording& recording);

// The RoPE base the recording was made with (metadata `rope_theta`), else `fallback`: the
// pre-RoPE methods undo and redo RoPE with it (a Llama 3 recording has 500000, not 10000).
// Throws kvq::Error naming the source when the value is not a positive number.
float recording_rope_theta(const RecordingLayers& rec, float fallback);
float recording_rope_theta(const std::map<std::string, std::string>& metadata,
                           const std::string& source, float fallback);

}  // namespace kvq
