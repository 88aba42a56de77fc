#include "harness/recording/recording_layers.h"

#include <cmath>
#include <exception>

#include "harness/io/safetensors.h"
#include "harness/recording/synth.h"
#include "reference/error.h"
#include "reference/tensor.h"

namespace kvq {
namespace {

// Builds the layers from a tensor source: `get(name)` returns the tensor's view or throws.
template <class Has, class Get>
RecordingLayers build(const std::string& source, Has has, Get get) {
  RecordingLayers out;
  out.source = source;
  int64_t layers = 0;
  while (has("layers." + std::to_string(layers) + ".k")) ++layers;
  if (layers == 0) throw Error(source + ": tensor 'layers.0.k' is missing");
  Shape k0, q0, h0;
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    LayerTensors t;
    for (const char* what : {"k", "k_pre_rope", "v", "q", "hidden_in"}) {
      const std::string name = p + what;
      if (!has(name)) throw Error(source + ": tensor '" + name + "' is missing");
      const TensorView v = get(name);
      const std::string w = what;
      const size_t rank = w == "hidden_in" ? 2 : 3;
      if (v.shape.size() != rank)
        throw Error(source + ": tensor '" + name + "' must have rank " + std::to_string(rank));
      Shape& first = w == "q" ? q0 : w == "hidden_in" ? h0 : k0;
      if (l == 0 && w != "k_pre_rope" && w != "v") first = v.shape;
      if (v.shape != first || v.shape[0] != k0[0])
        throw Error(source + ": tensor '" + name + "' has a shape unlike layer 0's");
      out.owned[name] = widen_f32(v, source + ": " + name);
    }
    t.shape = {k0[0], k0[1], k0[2]};
    t.q_heads = q0[1];
    t.hidden_size = h0[1];
    if (q0[2] != k0[2]) throw Error(source + ": " + p + "q head_dim differs from k's");
    t.k = out.owned[p + "k"];
    t.k_pre_rope = out.owned[p + "k_pre_rope"];
    t.v = out.owned[p + "v"];
    t.q = out.owned[p + "q"];
    t.hidden_in = out.owned[p + "hidden_in"];
    out.layers.push_back(t);
  }
  if (has("modality")) {
    const TensorView m = get("modality");
    if (m.dtype != DType::U8 || m.numel() != k0[0])
      throw Error(source + ": tensor 'modality' must be U8 [" + std::to_string(k0[0]) + "]");
    const auto* data = static_cast<const uint8_t*>(m.data);
    out.modality.assign(data, data + m.numel());
  }
  for (LayerTensors& t : out.layers) t.modality = out.modality;
  return out;
}

}  // namespace

RecordingLayers load_recording_layers(const SafetensorsFile& file) {
  RecordingLayers out = build(
      file.path(), [&](const std::string& n) { return file.has(n); },
      [&](const std::string& n) { return file.view(n); });
  out.metadata = file.metadata();
  return out;
}

RecordingLayers load_recording_layers(const SynthRecording& recording) {
  auto find = [&](const std::string& n) -> const Tensor* {
    for (const auto& [name, t] : recording.tensors)
      if (name == n) return &t;
    return nullptr;
  };
  RecordingLayers out = build(
      "synthetic", [&](const std::string& n) { return find(n) != nullptr; },
      [&](const std::string& n) { return find(n)->view(); });
  out.metadata = recording.metadata;
  return out;
}

float recording_rope_theta(const std::map<std::string, std::string>& metadata,
                           const std::string& source, float fallback) {
  const auto it = metadata.find("rope_theta");
  if (it == metadata.end()) return fallback;
  size_t used = 0;
  float theta = 0.0f;
  try {
    theta = std::stof(it->second, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != it->second.size() || !(theta > 0.0f) || !std::isfinite(theta))
    throw Error(source + ": metadata 'rope_theta' = '" + it->second +
                "' is not a positive number");
  return theta;
}

float recording_rope_theta(const RecordingLayers& rec, float fallback) {
  return recording_rope_theta(rec.metadata, rec.source, fallback);
}

}  // namespace kvq
