// The methods of docs/spec.md §8 (reference/methods.h): parameters, recording-level calibration,
// whole-layer apply (what `kvq apply` writes) and the per-token IncrementalCache of `kvq ppl`.
#include <pybind11/stl.h>

#include "python/src/arrays.h"
#include "python/src/bindings.h"
#include "reference/methods.h"

namespace kvq::py_bind {

namespace {

// One layer's arrays from a dict {k, k_pre_rope, v, hidden_in, q, modality} (the recording's
// tensor names), kept alive while the LayerTensors spans point into them.
struct LayerArrays {
  std::vector<py::array_t<float, py::array::c_style>> keep;
  py::array_t<uint8_t, py::array::c_style> modality;
  LayerTensors tensors;

  LayerArrays(const py::dict& d, int64_t index) {
    const std::string at = "layers." + std::to_string(index) + ".";
    if (!d.contains("v")) throw Error(at + "v is missing");
    // The named array, or None when the dict lacks it (methods read only what they need).
    const auto take = [&](const char* name, std::span<const float>& to) -> py::object {
      if (!d.contains(name) || d[name].is_none()) return py::none();
      keep.push_back(input<float>(d[name], at + name));
      to = span_of(keep.back());
      return keep.back();
    };
    const py::array v = take("v", tensors.v);  // present: checked above
    tensors.shape = kv_shape(v, at + "v");
    for (const char* kv : {"k", "k_pre_rope"}) {
      const py::object o = take(kv, std::string(kv) == "k" ? tensors.k : tensors.k_pre_rope);
      if (o.is_none()) continue;
      const py::array a = o;
      if (shape_of(a) != shape_of(v))
        throw Error(at + kv + ": shape " + shape_string(shape_of(a)) + ", expected " +
                    shape_string(shape_of(v)) + " (as v)");
    }
    if (const py::object o = take("hidden_in", tensors.hidden_in); !o.is_none()) {
      const py::array h = o;
      if (h.ndim() != 2 || h.shape(0) != tensors.shape.tokens)
        throw Error(at + "hidden_in: shape " + shape_string(shape_of(h)) + ", expected [" +
                    std::to_string(tensors.shape.tokens) + ", hidden]");
      tensors.hidden_size = h.shape(1);
    }
    if (const py::object o = take("q", tensors.q); !o.is_none()) {
      const py::array q = o;
      if (q.ndim() != 3 || q.shape(0) != tensors.shape.tokens ||
          q.shape(2) != tensors.shape.head_dim)
        throw Error(at + "q: shape " + shape_string(shape_of(q)) + ", expected [T, H_q, d]");
      tensors.q_heads = q.shape(1);
    }
    if (d.contains("modality") && !d["modality"].is_none()) {
      modality = input<uint8_t>(d["modality"], "modality");
      tensors.modality = span_of(modality);
    }
  }
};

std::vector<LayerArrays> layer_arrays(const py::list& layers) {
  std::vector<LayerArrays> out;
  out.reserve(layers.size());
  for (size_t i = 0; i < layers.size(); ++i)
    out.emplace_back(layers[i].cast<py::dict>(), static_cast<int64_t>(i));
  return out;
}

std::vector<LayerTensors> layer_tensors(const std::vector<LayerArrays>& arrays) {
  std::vector<LayerTensors> out;
  for (const LayerArrays& a : arrays) out.push_back(a.tensors);
  return out;
}

py::dict storage_dict(const StorageBits& s) {
  return py::dict(py::arg("elements") = s.elements, py::arg("codes") = s.codes,
                  py::arg("scales") = s.scales, py::arg("zeros") = s.zeros,
                  py::arg("kept") = s.kept, py::arg("outliers") = s.outliers,
                  py::arg("indices") = s.indices, py::arg("fp32") = s.fp32,
                  py::arg("total") = s.total(), py::arg("per_element") = s.per_element());
}

void bind_params(py::module_& m) {
  py::class_<MethodParams>(m, "MethodParams",
                           "Parameters of a KV-cache method (docs/spec.md §8); defaults as the spec's.")
      .def(py::init([](const std::string& method, int bits, py::kwargs kw) {
             MethodParams p;
             p.method = parse_method(method);
             p.bits = bits;
             py::object self = py::cast(p);
             for (const auto& [key, value] : kw) {
               const std::string name = py::str(key);
               if (!py::hasattr(self, name.c_str()) || name == "method")
                 throw Error("MethodParams: unknown parameter '" + name + "'");
               self.attr(name.c_str()) = value;
             }
             return self.cast<MethodParams>();
           }),
           py::arg("method"), py::arg("bits") = 2,
           "MethodParams('rotatekv', 2, group=128, window=-1, clip=-1.0, zero_point='float', "
           "head_group=4, outlier_fraction=0.01, first_tokens=1, calibration_fraction=0.5, "
           "rope_theta=10000.0, bits_hi=8, pivot_top_k=20, kvsink_tau_k=50.0)")
      .def_property("method", [](const MethodParams& p) { return method_name(p.method); },
                    [](MethodParams& p, const std::string& s) { p.method = parse_method(s); })
      .def_readwrite("bits", &MethodParams::bits, "b (akvq-vl: b_lo)")
      .def_readwrite("group", &MethodParams::group, "G")
      .def_readwrite("window", &MethodParams::window, "R recent tokens in fp16 (-1: default)")
      .def_readwrite("clip", &MethodParams::clip, "r (-1: default)")
      .def_property(
          "zero_point",
          [](const MethodParams& p) { return p.zero_point == ZeroPoint::Float ? "float" : "int"; },
          [](MethodParams& p, const std::string& s) { p.zero_point = parse_zero_point(s); })
      .def_readwrite("head_group", &MethodParams::head_group)
      .def_readwrite("outlier_fraction", &MethodParams::outlier_fraction)
      .def_readwrite("first_tokens", &MethodParams::first_tokens)
      .def_readwrite("calibration_fraction", &MethodParams::calibration_fraction)
      .def_readwrite("rope_theta", &MethodParams::rope_theta)
      .def_property(
          "bits_hi", [](const MethodParams& p) { return p.allocation.bits_hi; },
          [](MethodParams& p, int b) { p.allocation.bits_hi = b; }, "akvq-vl b_hi")
      .def_property(
          "pivot_top_k", [](const MethodParams& p) { return p.pivot.top_k; },
          [](MethodParams& p, int64_t k) { p.pivot.top_k = k; }, "rotatekv pivots k")
      .def_property(
          "kvsink_tau_k", [](const MethodParams& p) { return p.kvsink.tau_k; },
          [](MethodParams& p, float t) { p.kvsink.tau_k = t; }, "KVSink tau_k")
      .def_property_readonly("uses_pre_rope_k",
                             [](const MethodParams& p) { return method_uses_pre_rope_k(p.method); })
      .def("__repr__", [](const MethodParams& p) {
        return std::string("<kvq.MethodParams ") + method_name(p.method) +
               " b=" + std::to_string(p.bits) + " G=" + std::to_string(p.group) + ">";
      });

  py::class_<Calibration>(m, "Calibration",
                          "Recording-level decisions of a method (rotatekv permutations, KVSink "
                          "l*, C* and median).")
      .def(py::init<>())
      .def_property_readonly("k_perm", [](const Calibration& c) { return c.k_perm; })
      .def_property_readonly("pivots", [](const Calibration& c) { return c.pivots; })
      .def_property_readonly("kvsink_layer", [](const Calibration& c) { return c.kvsink.layer; })
      .def_property_readonly("kvsink_channels",
                             [](const Calibration& c) { return c.kvsink.channels; })
      .def_property_readonly("kvsink_median", [](const Calibration& c) { return c.kvsink.median; })
      .def_property_readonly("kvsink_sinks", [](const Calibration& c) { return c.kvsink_sinks; })
      .def_readonly("perm_calibration_tokens", &Calibration::perm_calibration_tokens);
}

void bind_applied(py::module_& m) {
  py::class_<AppliedTensor>(m, "AppliedTensor", "K or V of one layer after a method.")
      .def_property_readonly(
          "parts",
          [](const AppliedTensor& t) {
            py::list out;
            for (const auto& p : t.parts)
              out.append(py::make_tuple(
                  output(std::vector<int32_t>(p.tokens), {static_cast<int64_t>(p.tokens.size())}),
                  p.q));
            return out;
          },
          "[(tokens int32, kvq.Quantized)]: quantized rows in the rotated basis")
      .def_property_readonly("kept", [](const AppliedTensor& t) {
        return output(std::vector<int32_t>(t.kept), {static_cast<int64_t>(t.kept.size())});
      }, "tokens stored fp16, ascending")
      .def_property_readonly("kept_values", [](const AppliedTensor& t) {
        const auto n = static_cast<int64_t>(t.kept.size());
        return output<Float16>(std::vector<uint16_t>(t.kept_values),
                               {n, n ? static_cast<int64_t>(t.kept_values.size()) / n : 0});
      }, "float16 [kept, C] rows in the quantizer-input basis")
      .def_property_readonly("outlier_index", [](const AppliedTensor& t) {
        return output(std::vector<int32_t>(t.outliers.index),
                      {static_cast<int64_t>(t.outliers.index.size())});
      })
      .def_property_readonly("outlier_value", [](const AppliedTensor& t) {
        return output<Float16>(std::vector<uint16_t>(t.outliers.value),
                               {static_cast<int64_t>(t.outliers.value.size())});
      })
      .def_property_readonly("storage", [](const AppliedTensor& t) { return storage_dict(t.storage); },
                             "bits of the stored layout (docs/spec.md §3)");

  py::class_<AppliedLayer>(m, "AppliedLayer", "One layer after a method (kvq apply's output).")
      .def_readonly("k", &AppliedLayer::k)
      .def_readonly("v", &AppliedLayer::v)
      .def_readonly("cache", &AppliedLayer::cache, "the same data as a kvq.DecodeCache")
      .def("k_dequant", [](const AppliedLayer& l) {
        const KvShape& s = l.cache.shape;
        return output(std::vector<float>(l.k.dequant), {s.tokens, s.heads, s.head_dim});
      }, "float32 [T, H, d] reconstruction of K (post-RoPE, original basis)")
      .def("v_dequant", [](const AppliedLayer& l) {
        const KvShape& s = l.cache.shape;
        return output(std::vector<float>(l.v.dequant), {s.tokens, s.heads, s.head_dim});
      }, "float32 [T, H, d] reconstruction of V");
}

// Rows start .. size-1 of a reconstruction (a decode step re-reads only the rows that can still
// change: the window and one pending group).
py::array rows_from(const IncrementalCache& c, std::span<const float> all, int64_t start) {
  const int64_t n = c.size();
  if (start < 0 || start > n)
    throw Error("incremental cache: start " + std::to_string(start) + " outside [0, " +
                std::to_string(n) + "]");
  const int64_t width = n ? static_cast<int64_t>(all.size()) / n : 0;
  return output(std::vector<float>(all.begin() + start * width, all.end()), {n - start, width});
}

}  // namespace

void bind_methods(py::module_& m) {
  bind_params(m);
  bind_applied(m);

  m.def(
      "calibrate",
      [](const py::list& layers, const MethodParams& params) {
        const std::vector<LayerArrays> arrays = layer_arrays(layers);
        const std::vector<LayerTensors> tensors = layer_tensors(arrays);
        py::gil_scoped_release release;
        return calibrate(tensors, params);
      },
      py::arg("layers"), py::arg("params"),
      "Recording-level calibration of a method over every layer: layers is a list of dicts of "
      "float32 arrays named as in a recording (k, k_pre_rope, v [T, H_kv, d], hidden_in "
      "[T, hidden], q [T, H_q, d], optional modality uint8 [T]).");

  m.def(
      "apply_method",
      [](const py::dict& layer, int64_t index, int64_t layers, const Calibration& calibration,
         const MethodParams& params) {
        const LayerArrays a(layer, index);
        py::gil_scoped_release release;
        return apply_method(a.tensors, index, layers, calibration, params);
      },
      py::arg("layer"), py::arg("index"), py::arg("layers"), py::arg("calibration"),
      py::arg("params"),
      "Whole-layer apply (prefill) of one layer `index` of `layers`: returns a "
      "kvq.AppliedLayer.");

  m.def(
      "apply",
      [](const py::list& layers, const MethodParams& params) {
        const std::vector<LayerArrays> arrays = layer_arrays(layers);
        const std::vector<LayerTensors> tensors = layer_tensors(arrays);
        py::gil_scoped_release release;
        const Calibration calibration = calibrate(tensors, params);
        std::vector<AppliedLayer> out;
        const auto n = static_cast<int64_t>(tensors.size());
        for (int64_t i = 0; i < n; ++i)
          out.push_back(apply_method(tensors[static_cast<size_t>(i)], i, n, calibration, params));
        return std::make_pair(std::move(out), calibration);
      },
      py::arg("layers"), py::arg("params"),
      "What `kvq apply` computes: calibrate over every layer, then apply the method to each. "
      "Returns (list of kvq.AppliedLayer, kvq.Calibration).");

  py::class_<IncrementalCache>(
      m, "IncrementalCache",
      "One layer's per-token cache of `kvq ppl` (docs/spec.md §9): each appended K/V row goes "
      "through the method; keys() / values() are what attention reads.")
      .def(py::init([](const MethodParams& params, int64_t kv_heads, int64_t head_dim,
                       int64_t layer, int64_t layers, const py::object& k_perm,
                       const Calibration* calibration) {
             LayerCalibration lc;
             lc.k_perm = vector_of<int32_t>(k_perm, "IncrementalCache k_perm");
             if (calibration) lc.kvsink = calibration->kvsink;
             return IncrementalCache(params, kv_heads, head_dim, layer, layers, std::move(lc));
           }),
           py::arg("params"), py::arg("kv_heads"), py::arg("head_dim"), py::arg("layer"),
           py::arg("layers"), py::arg("k_perm") = py::none(), py::arg("calibration") = nullptr,
           "k_perm: rotatekv's channel permutation of this layer (Calibration.k_perm[layer]); "
           "calibration: its KVSink l*, C*, median are used (kvsink+kvquant).")
      .def(
          "append",
          [](IncrementalCache& c, const py::object& k, const py::object& v,
             const py::object& k_pre_rope, const py::object& hidden_in, int64_t position,
             int modality, int sink) {
            const auto vv = input<float>(v, "incremental cache v");
            py::array_t<float, py::array::c_style> kk, kp, h;
            TokenRows t;
            if (!k.is_none()) t.k = span_of(kk = input<float>(k, "incremental cache k"));
            if (!k_pre_rope.is_none())
              t.k_pre_rope = span_of(kp = input<float>(k_pre_rope, "incremental cache k_pre_rope"));
            if (!hidden_in.is_none())
              t.hidden_in = span_of(h = input<float>(hidden_in, "incremental cache hidden_in"));
            t.v = span_of(vv);
            t.position = position;
            t.modality = static_cast<uint8_t>(modality);
            t.sink = sink;
            c.append(t);
          },
          py::arg("k") = py::none(), py::arg("v"), py::arg("k_pre_rope") = py::none(),
          py::arg("hidden_in") = py::none(), py::arg("position") = 0, py::arg("modality") = 0,
          py::arg("sink") = -1,
          "One token's rows, float32 [H_kv*d] (k post-RoPE for rtn/kivi/akvq-vl, k_pre_rope "
          "for the pre-RoPE methods, which apply kvq's RoPE at `position` on reconstruction: "
          "position 0 leaves keys() pre-RoPE), hidden_in [hidden] for rotatekv/KVSink; sink -1 "
          "lets the method decide, 0/1 forces it.")
      .def("__len__", &IncrementalCache::size)
      .def("keys", [](const IncrementalCache& c, int64_t start) { return rows_from(c, c.keys(), start); },
           py::arg("start") = 0,
           "float32 [size - start, H_kv*d]: reconstructed K of tokens start.. (post-RoPE unless "
           "appended at position 0)")
      .def("values", [](const IncrementalCache& c, int64_t start) { return rows_from(c, c.values(), start); },
           py::arg("start") = 0, "float32 [size - start, H_kv*d]: reconstructed V of tokens start..")
      .def("kept", &IncrementalCache::kept, py::arg("token"), "whether token is a fp16 sink")
      .def("k_storage", [](const IncrementalCache& c) { return storage_dict(c.k_storage()); })
      .def("v_storage", [](const IncrementalCache& c) { return storage_dict(c.v_storage()); });
}

}  // namespace kvq::py_bind
