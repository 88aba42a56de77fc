#include "harness/model/recorder.h"

#include <cmath>
#include <deque>
#include <map>
#include <nlohmann/json.hpp>

#include "harness/io/safetensors.h"
#include "reference/error.h"
#include "reference/half.h"

namespace kvq {

Recording record_activations(const Model& model, std::span<const int32_t> tokens,
                             const std::function<void(int64_t, int64_t)>& progress) {
  const ModelConfig& c = model.config();
  const auto T = static_cast<int64_t>(tokens.size());
  if (T < 1 || T > c.seq_len)
    throw Error("record: " + std::to_string(T) + " tokens requested; " + model.path() +
                " records 1 to seq_len = " + std::to_string(c.seq_len) + " tokens");
  Recording rec;
  rec.config = c;
  rec.model = model.name();
  rec.tokens.assign(tokens.begin(), tokens.end());
  rec.layers.resize(static_cast<size_t>(c.n_layers));
  for (LayerRecording& l : rec.layers) {
    l.hidden_in.reserve(static_cast<size_t>(T * c.dim));
    l.q.reserve(static_cast<size_t>(T * c.dim));
    l.k_pre_rope.reserve(static_cast<size_t>(T * c.kv_dim()));
    l.k.reserve(static_cast<size_t>(T * c.kv_dim()));
    l.v.reserve(static_cast<size_t>(T * c.kv_dim()));
  }
  Fp32KvCache cache(c.n_layers);
  Decoder decoder(model, cache);
  decoder.set_hook([&rec](const LayerActivations& a) {
    LayerRecording& l = rec.layers[static_cast<size_t>(a.layer)];
    l.hidden_in.insert(l.hidden_in.end(), a.hidden_in.begin(), a.hidden_in.end());
    l.q.insert(l.q.end(), a.q.begin(), a.q.end());
    l.k_pre_rope.insert(l.k_pre_rope.end(), a.k_pre_rope.begin(), a.k_pre_rope.end());
    l.k.insert(l.k.end(), a.k.begin(), a.k.end());
    l.v.insert(l.v.end(), a.v.begin(), a.v.end());
  });
  for (int64_t t = 0; t < T; ++t) {
    decoder.step(tokens[static_cast<size_t>(t)]);
    if (progress && ((t + 1) % 64 == 0 || t + 1 == T)) progress(t + 1, T);
  }
  return rec;
}

void write_recording(const std::string& path, const Recording& rec, DType dtype) {
  if (dtype != DType::F32 && dtype != DType::F16)
    throw Error("record: a recording is written as f32 or f16");
  const ModelConfig& c = rec.config;
  const int64_t T = rec.size(), d = c.head_dim();
  const Shape kv_shape = {T, c.n_kv_heads, d};
  const Shape q_shape = {T, c.n_heads, d};
  const Shape hidden_shape = {T, c.dim};
  std::vector<NamedTensor> tensors;
  std::deque<std::vector<uint16_t>> halves;  // F16 copies, alive until written
  for (size_t i = 0; i < rec.layers.size(); ++i) {
    const LayerRecording& l = rec.layers[i];
    const std::string prefix = "layers." + std::to_string(i) + ".";
    const auto add = [&](const char* name, const std::vector<float>& data, const Shape& shape) {
      if (static_cast<int64_t>(data.size()) != shape_numel(shape))
        throw Error("record: " + prefix + name + " holds " + std::to_string(data.size()) +
                    " values, shape " + shape_string(shape) + " needs " +
                    std::to_string(shape_numel(shape)));
      if (dtype == DType::F32) {
        tensors.push_back({prefix + name, TensorView{data.data(), DType::F32, shape}});
        return;
      }
      std::vector<uint16_t>& h = halves.emplace_back(data.size());
      for (size_t j = 0; j < data.size(); ++j) {
        h[j] = float_to_half(data[j]);
        if (!std::isfinite(half_to_float(h[j])))
          throw Error("record: " + prefix + name + "[" + std::to_string(j) + "] = " +
                      std::to_string(data[j]) + " is beyond fp16's range; record as f32");
      }
      tensors.push_back({prefix + name, TensorView{h.data(), DType::F16, shape}});
    };
    add("hidden_in", l.hidden_in, hidden_shape);
    add("q", l.q, q_shape);
    add("k_pre_rope", l.k_pre_rope, kv_shape);
    add("k", l.k, kv_shape);
    add("v", l.v, kv_shape);
  }
  // Keys as in data/tiny-moe.safetensors, plus the llama2.c dimensions.
  char theta[32];
  std::snprintf(theta, sizeof theta, "%g", static_cast<double>(c.rope_theta));
  const std::map<std::string, std::string> metadata = {
      {"model", rec.model},
      {"format", "llama2.c"},
      {"n_layers", std::to_string(c.n_layers)},
      {"n_heads", std::to_string(c.n_heads)},
      {"n_kv_heads", std::to_string(c.n_kv_heads)},
      {"head_dim", std::to_string(d)},
      {"dim", std::to_string(c.dim)},
      {"hidden_dim", std::to_string(c.hidden_dim)},
      {"vocab_size", std::to_string(c.vocab_size)},
      {"seq_len", std::to_string(c.seq_len)},
      {"rope_theta", theta},
      {"tokens", nlohmann::json(rec.tokens).dump()},
      {"text", rec.text},
  };
  write_safetensors(path, tensors, metadata);
}

}  // namespace kvq
