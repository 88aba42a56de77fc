// `kvq apply` core: read a recording, calibrate, apply the method layer by layer, write the
// stored layout (harness/recording/apply.h).
#include "harness/recording/apply.h"

#include <cstring>
#include <deque>
#include <map>
#include <sstream>

#include "harness/recording/recording_layers.h"
#include "reference/error.h"
#include "reference/half.h"

namespace kvq {

namespace {

std::string layer_name(int64_t i, const std::string& tensor) {
  return "layers." + std::to_string(i) + "." + tensor;
}

// The fp32 contents of a tensor the method needs, with its shape checked against `shape`.
std::vector<float> read_checked(const SafetensorsFile& f, const std::string& name,
                                const Shape& shape, const std::string& why) {
  if (!f.has(name)) throw Error(f.path() + ": tensor " + name + " is missing (" + why + ")");
  const TensorView view = f.view(name);
  if (view.shape != shape)
    throw Error(f.path() + ": tensor " + name + " has shape " + shape_string(view.shape) +
                ", expected " + shape_string(shape));
  return f.read_f32(name);
}

struct LayerData {
  std::vector<float> k, k_pre_rope, v, hidden_in, q;
};

const char* axis_name(Axis a) {
  return a == Axis::Token ? "token" : "channel";
}

}  // namespace

AppliedRecording apply_recording(const SafetensorsFile& f, const MethodParams& params,
                                 const std::string& backend) {
  if (backend != "ref")
    throw Error("apply: --backend '" + backend +
                "' does not run method compositions; methods run on the reference ('ref')");
  AppliedRecording out;
  out.params = params;
  out.params.rope_theta = recording_rope_theta(f.metadata(), f.path(), params.rope_theta);
  out.backend = backend;
  int64_t layers = 0;
  while (f.has(layer_name(layers, "v"))) ++layers;
  if (layers == 0) throw Error(f.path() + ": tensor layers.0.v is missing (no layers found)");
  const TensorView v0 = f.view(layer_name(0, "v"));
  if (v0.shape.size() != 3)
    throw Error(f.path() + ": tensor layers.0.v has shape " + shape_string(v0.shape) +
                ", expected [T, H_kv, d]");
  const KvShape shape{v0.shape[0], v0.shape[1], v0.shape[2]};
  out.shape = shape;
  const Shape kv_shape = v0.shape;
  const Method m = params.method;
  const bool need_pre = method_uses_pre_rope_k(m);
  const bool need_hidden = m == Method::RotateKv || m == Method::KvSinkKvQuant;

  std::vector<uint8_t> modality;
  if (f.has("modality")) {
    const TensorView mv = f.view("modality");
    if (mv.dtype != DType::U8 || mv.shape != Shape{shape.tokens})
      throw Error(f.path() + ": tensor modality must be U8 [" + std::to_string(shape.tokens) +
                  "], got " + dtype_name(mv.dtype) + " " + shape_string(mv.shape));
    modality.resize(static_cast<size_t>(shape.tokens));
    std::memcpy(modality.data(), mv.data, modality.size());
  }

  std::vector<LayerData> data(static_cast<size_t>(layers));
  std::vector<LayerTensors> tensors(static_cast<size_t>(layers));
  for (int64_t i = 0; i < layers; ++i) {
    LayerData& d = data[static_cast<size_t>(i)];
    LayerTensors& t = tensors[static_cast<size_t>(i)];
    t.shape = shape;
    d.v = read_checked(f, layer_name(i, "v"), kv_shape, "values");
    if (need_pre)
      d.k_pre_rope = read_checked(f, layer_name(i, "k_pre_rope"), kv_shape,
                                  std::string(method_name(m)) + " quantizes pre-RoPE keys");
    if (!need_pre || m == Method::AkvqVl)
      d.k = read_checked(f, layer_name(i, "k"), kv_shape, "post-RoPE keys");
    if (need_hidden) {
      const std::string name = layer_name(i, "hidden_in");
      if (!f.has(name))
        throw Error(f.path() + ": tensor " + name + " is missing (" + method_name(m) +
                    " sinks need the residual stream)");
      const TensorView hv = f.view(name);
      if (hv.shape.size() != 2 || hv.shape[0] != shape.tokens)
        throw Error(f.path() + ": tensor " + name + " has shape " + shape_string(hv.shape) +
                    ", expected [" + std::to_string(shape.tokens) + ", hidden]");
      t.hidden_size = hv.shape[1];
      d.hidden_in = f.read_f32(name);
    }
    if (m == Method::AkvqVl &&
        layer_pattern(i, layers, params.allocation) == AttentionPattern::Psa) {
      const std::string name = layer_name(i, "q");
      if (!f.has(name))
        throw Error(f.path() + ": tensor " + name + " is missing (akvq-vl PSA layers need q)");
      const TensorView qv = f.view(name);
      if (qv.shape.size() != 3 || qv.shape[0] != shape.tokens || qv.shape[2] != shape.head_dim)
        throw Error(f.path() + ": tensor " + name + " has shape " + shape_string(qv.shape) +
                    ", expected [T, H_q, d]");
      t.q_heads = qv.shape[1];
      d.q = f.read_f32(name);
    }
    t.k = d.k;
    t.k_pre_rope = d.k_pre_rope;
    t.v = d.v;
    t.hidden_in = d.hidden_in;
    t.q = d.q;
    t.modality = modality;
  }
  try {
    out.calibration = calibrate(tensors, out.params);
    StorageBits k_total, v_total;
    for (int64_t i = 0; i < layers; ++i) {
      out.layers.push_back(
          apply_method(tensors[static_cast<size_t>(i)], i, layers, out.calibration, out.params));
      const AppliedLayer& a = out.layers.back();
      k_total.elements += a.k.storage.elements;
      k_total.codes += a.k.storage.total();
      v_total.elements += a.v.storage.elements;
      v_total.codes += a.v.storage.total();
    }
    out.k_bits_per_element = k_total.per_element();
    out.v_bits_per_element = v_total.per_element();
  } catch (const Error& e) {
    throw Error(f.path() + ": " + e.what());
  }
  return out;
}

void write_applied(const std::string& path, const AppliedRecording& applied,
                   const std::string& source) {
  std::deque<Tensor> store;  // stable addresses for the views
  std::vector<NamedTensor> named;
  const KvShape& s = applied.shape;
  const Shape kv_shape{s.tokens, s.heads, s.head_dim};
  auto add = [&](const std::string& name, DType dtype, Shape shape, const void* src) {
    store.emplace_back(dtype, std::move(shape));
    Tensor& t = store.back();
    if (!t.bytes.empty()) std::memcpy(t.bytes.data(), src, t.bytes.size());
    named.push_back({name, t.view()});
  };
  const bool fp32 = applied.params.method == Method::Fp32;
  for (size_t i = 0; i < applied.layers.size(); ++i) {
    const AppliedLayer& layer = applied.layers[i];
    for (const auto& [x, a] : {std::pair<std::string, const AppliedTensor*>{"k", &layer.k},
                               std::pair<std::string, const AppliedTensor*>{"v", &layer.v}}) {
      const std::string base = layer_name(static_cast<int64_t>(i), x) + ".";
      add(base + "dequant", DType::F32, kv_shape, a->dequant.data());
      if (fp32) continue;
      std::vector<uint8_t> codes, zero_int;
      std::vector<uint16_t> scale, zero;
      std::vector<int32_t> rows;
      for (const auto& part : a->parts) {
        codes.insert(codes.end(), part.q.codes.begin(), part.q.codes.end());
        scale.insert(scale.end(), part.q.scale.begin(), part.q.scale.end());
        zero.insert(zero.end(), part.q.zero.begin(), part.q.zero.end());
        zero_int.insert(zero_int.end(), part.q.zero_int.begin(), part.q.zero_int.end());
        rows.insert(rows.end(), part.tokens.begin(), part.tokens.end());
      }
      const auto n = [](const auto& v) { return static_cast<int64_t>(v.size()); };
      add(base + "codes", DType::U8, {n(codes)}, codes.data());
      add(base + "scale", DType::F16, {n(scale)}, scale.data());
      if (applied.params.zero_point == ZeroPoint::Float)
        add(base + "zero", DType::F16, {n(zero)}, zero.data());
      else
        add(base + "zero", DType::U8, {n(zero_int)}, zero_int.data());
      add(base + "rows", DType::I32, {n(rows)}, rows.data());
      add(base + "kept", DType::I32, {n(a->kept)}, a->kept.data());
      add(base + "kept_values", DType::F16, {n(a->kept), s.heads, s.head_dim},
          a->kept_values.data());
      if (!a->outliers.index.empty() || applied.params.method == Method::KvQuant ||
          applied.params.method == Method::KvSinkKvQuant) {
        add(base + "outlier_index", DType::I32, {n(a->outliers.index)}, a->outliers.index.data());
        add(base + "outlier_value", DType::F16, {n(a->outliers.value)}, a->outliers.value.data());
      }
      if (applied.params.method == Method::AkvqVl) {
        std::vector<uint8_t> bits(static_cast<size_t>(s.tokens), 16);
        for (const auto& part : a->parts)
          for (int32_t t : part.tokens)
            bits[static_cast<size_t>(t)] = static_cast<uint8_t>(part.q.params.bits);
        add(base + "bits", DType::U8, {s.tokens}, bits.data());
      }
    }
    if (applied.params.method == Method::RotateKv) {
      const auto& perm = applied.calibration.k_perm.at(i);
      add(layer_name(static_cast<int64_t>(i), "k.perm"), DType::I32,
          {static_cast<int64_t>(perm.size())}, perm.data());
    }
  }
  const MethodParams& p = applied.params;
  std::map<std::string, std::string> meta;
  meta["method"] = method_name(p.method);
  meta["bits"] = std::to_string(p.bits);
  meta["group"] = std::to_string(p.group);
  meta["backend"] = applied.backend;
  meta["source"] = source;
  meta["layers"] = std::to_string(applied.layers.size());
  if (!applied.layers.empty() && !fp32) {
    const DecodeCache& c = applied.layers[0].cache;
    const auto axis_of = [](const AppliedTensor& a) {
      return a.parts.empty() ? "none" : axis_name(a.parts[0].q.params.axis);
    };
    meta["axis"] =
        std::string("k=") + axis_of(applied.layers[0].k) + ",v=" + axis_of(applied.layers[0].v);
    meta["k_pre_rope"] = c.k_pre_rope ? "true" : "false";
    const auto clip_of = [](const AppliedTensor& a) {
      std::ostringstream o;
      o << (a.parts.empty() ? 1.0f : a.parts[0].q.params.clip);
      return o.str();
    };
    meta["clip"] = "k=" + clip_of(applied.layers[0].k) + ",v=" + clip_of(applied.layers[0].v);
  } else {
    meta["axis"] = "none";
  }
  meta["window"] = std::to_string(p.window);
  meta["zero_point"] = p.zero_point == ZeroPoint::Float ? "float" : "int";
  meta["permutation"] = p.method == Method::RotateKv
                            ? "layers.{i}.k.perm (calibrated on tokens 0.." +
                                  std::to_string(applied.calibration.perm_calibration_tokens - 1) +
                                  ")"
                            : "none";
  if (p.method == Method::AkvqVl) meta["bits_hi"] = std::to_string(p.allocation.bits_hi);
  if (p.method == Method::KvSinkKvQuant) {
    std::string channels;
    for (int32_t c : applied.calibration.kvsink.channels)
      channels += (channels.empty() ? "" : ",") + std::to_string(c);
    meta["kvsink_layer"] = std::to_string(applied.calibration.kvsink.layer);
    meta["kvsink_channels"] = channels;
  }
  std::ostringstream kb, vb;
  kb << applied.k_bits_per_element;
  vb << applied.v_bits_per_element;
  meta["bits_per_element_k"] = kb.str();
  meta["bits_per_element_v"] = vb.str();
  write_safetensors(path, named, meta);
}

}  // namespace kvq
