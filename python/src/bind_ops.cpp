// The backend ops on numpy arrays (backends/backend.h): each takes `backend` ("ref", "avx512",
// "avx2", "cuda") and runs exactly that backend's implementation; an unavailable backend is a
// kvq.Error saying why.
#include <pybind11/stl.h>

#include <map>
#include <mutex>

#include "backends/backend.h"
#include "python/src/arrays.h"
#include "python/src/bindings.h"

namespace kvq::py_bind {

namespace {

// One instance per backend name for the life of the process (the CUDA backend's set-up is not
// free); make_backend's error names the available ones.
const Backend& backend_named(const std::string& name) {
  static std::mutex mutex;
  static std::map<std::string, std::unique_ptr<Backend>> made;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = made.find(name);
  if (it == made.end()) it = made.emplace(name, make_backend(name)).first;
  return *it->second;
}

Axis parse_axis(const std::string& s) {
  if (s == "token") return Axis::Token;
  if (s == "channel") return Axis::Channel;
  throw Error("axis must be 'token' or 'channel', got '" + s + "'");
}

AppendRotation parse_rotation(const std::string& s) {
  if (s == "none") return AppendRotation::None;
  if (s == "key_grouped") return AppendRotation::KeyGrouped;
  if (s == "per_head") return AppendRotation::PerHead;
  throw Error("rotation must be 'none', 'key_grouped' or 'per_head', got '" + s + "'");
}

KeyRotation parse_key_rotation(const std::string& s) {
  if (s == "none") return KeyRotation::None;
  if (s == "grouped") return KeyRotation::GroupedHadamard;
  if (s == "per_head") return KeyRotation::PerHeadHadamard;
  throw Error("k_rotation must be 'none', 'grouped' or 'per_head', got '" + s + "'");
}

std::string key_rotation_name(KeyRotation r) {
  switch (r) {
    case KeyRotation::GroupedHadamard: return "grouped";
    case KeyRotation::PerHeadHadamard: return "per_head";
    default: return "none";
  }
}

QuantParams quant_params(int bits, int64_t group, const std::string& axis, float clip,
                         const std::string& zero_point) {
  QuantParams p;
  p.bits = bits;
  p.group = group;
  p.axis = parse_axis(axis);
  p.clip = clip;
  p.zero_point = parse_zero_point(zero_point);
  return p;
}

py::array f32_output(std::vector<float>&& v, const py::array& like) {
  return output(std::move(v), shape_of(like));
}

}  // namespace

ZeroPoint parse_zero_point(const std::string& s) {
  if (s == "float") return ZeroPoint::Float;
  if (s == "int") return ZeroPoint::Int;
  throw Error("zero_point must be 'float' or 'int', got '" + s + "'");
}

void bind_ops(py::module_& m) {
  m.def(
      "backends",
      [] {
        py::list out;
        for (const BackendEntry& e : backend_registry())
          out.append(py::dict(py::arg("name") = e.name, py::arg("available") = e.available,
                              py::arg("detail") = e.detail));
        return out;
      },
      "Every backend compiled in, in preference order (ref first): a list of dicts with 'name', "
      "'available' and 'detail' (features found, or why the backend is not available).");

  py::class_<Quantized>(m, "Quantized",
                        "Packed codes, fp16 scales and zeros of one quantized [rows, cols] "
                        "tensor (docs/spec.md §3): groups in memory order of their first element.")
      .def(py::init([](int64_t rows, int64_t cols, int bits, int64_t group,
                       const std::string& axis, float clip, const std::string& zero_point,
                       const py::object& codes, const py::object& scale, const py::object& zero,
                       const py::object& zero_int) {
             Quantized q;
             q.rows = rows;
             q.cols = cols;
             q.params = quant_params(bits, group, axis, clip, zero_point);
             q.codes = vector_of<uint8_t>(codes, "codes");
             q.scale = half_bits(scale, "scale");
             if (!zero.is_none()) q.zero = half_bits(zero, "zero");
             q.zero_int = vector_of<uint8_t>(zero_int, "zero_int");
             return q;
           }),
           py::arg("rows"), py::arg("cols"), py::arg("bits"), py::arg("group"),
           py::arg("axis") = "token", py::arg("clip") = 1.0f, py::arg("zero_point") = "float",
           py::arg("codes"), py::arg("scale"), py::arg("zero") = py::none(),
           py::arg("zero_int") = py::none())
      .def_readonly("rows", &Quantized::rows)
      .def_readonly("cols", &Quantized::cols)
      .def_property_readonly("bits", [](const Quantized& q) { return q.params.bits; })
      .def_property_readonly("group", [](const Quantized& q) { return q.params.group; })
      .def_property_readonly(
          "axis", [](const Quantized& q) { return q.params.axis == Axis::Token ? "token" : "channel"; })
      .def_property_readonly("clip", [](const Quantized& q) { return q.params.clip; })
      .def_property_readonly("zero_point", [](const Quantized& q) {
        return q.params.zero_point == ZeroPoint::Float ? "float" : "int";
      })
      .def_property_readonly("codes", [](const Quantized& q) {
        return output(std::vector<uint8_t>(q.codes), {static_cast<int64_t>(q.codes.size())});
      }, "packed code streams, uint8 (group order, each group padded to whole bytes)")
      .def_property_readonly("scale", [](const Quantized& q) {
        return output<Float16>(std::vector<uint16_t>(q.scale), {static_cast<int64_t>(q.scale.size())});
      }, "one fp16 scale per group")
      .def_property_readonly("zero", [](const Quantized& q) {
        return output<Float16>(std::vector<uint16_t>(q.zero), {static_cast<int64_t>(q.zero.size())});
      }, "one fp16 zero per group (zero_point 'float'; empty otherwise)")
      .def_property_readonly("zero_int", [](const Quantized& q) {
        return output(std::vector<uint8_t>(q.zero_int), {static_cast<int64_t>(q.zero_int.size())});
      }, "one uint8 zero per group (zero_point 'int'; empty otherwise)")
      .def("unpacked", [](const Quantized& q) {
        return output(unpack_all(q), {q.rows, q.cols});
      }, "every code unpacked, uint8 [rows, cols] in element order")
      .def("__repr__", [](const Quantized& q) {
        return "<kvq.Quantized [" + std::to_string(q.rows) + ", " + std::to_string(q.cols) +
               "] b=" + std::to_string(q.params.bits) + " G=" + std::to_string(q.params.group) +
               (q.params.axis == Axis::Token ? " token" : " channel") + ">";
      });

  m.def(
      "fwht",
      [](const py::object& x, int n, const std::string& backend) {
        const auto a = input<float>(x, "fwht x");
        std::vector<float> out(a.data(), a.data() + a.size());
        const Backend& b = backend_named(backend);
        {
          py::gil_scoped_release release;
          b.fwht(out, n);
        }
        return f32_output(std::move(out), a);
      },
      py::arg("x"), py::arg("n"), py::arg("backend") = "ref",
      "Normalized FWHT (docs/spec.md §1) of every consecutive block of n values of float32 x; "
      "returns a new array of x's shape.");

  m.def(
      "reorder",
      [](const py::object& x, const py::object& perm, const std::string& backend) {
        const auto a = input<float>(x, "reorder x");
        const auto p = input<int32_t>(perm, "reorder perm");
        const int64_t rows = p.size() ? a.size() / p.size() : 0;
        const Backend& b = backend_named(backend);
        std::vector<float> out;
        {
          py::gil_scoped_release release;
          out = b.reorder(span_of(a), rows, span_of(p));
        }
        return f32_output(std::move(out), a);
      },
      py::arg("x"), py::arg("perm"), py::arg("backend") = "ref",
      "out[t, j] = x[t, perm[j]] over rows of len(perm) channels (docs/spec.md §2).");

  m.def(
      "rotate_k",
      [](const py::object& k, int head_group, const py::object& perm, const std::string& backend) {
        const auto a = input<float>(k, "rotate_k k_pre_rope");
        const KvShape shape = kv_shape(a, "rotate_k k_pre_rope");
        RotationParams p{head_group, vector_of<int32_t>(perm, "rotate_k perm")};
        const Backend& b = backend_named(backend);
        std::vector<float> out;
        {
          py::gil_scoped_release release;
          out = b.rotate_k(span_of(a), shape, p);
        }
        return f32_output(std::move(out), a);
      },
      py::arg("k_pre_rope"), py::arg("head_group") = 4, py::arg("perm") = py::none(),
      py::arg("backend") = "ref",
      "RotateKV key rotation (docs/spec.md §2): grouped-head FWHT of pre-RoPE keys [T, H, d], then "
      "the channel reorder perm (int32 [H*d]) if given.");

  m.def(
      "rotate_v",
      [](const py::object& v, const std::string& backend) {
        const auto a = input<float>(v, "rotate_v v");
        const KvShape shape = kv_shape(a, "rotate_v v");
        const Backend& b = backend_named(backend);
        std::vector<float> out;
        {
          py::gil_scoped_release release;
          out = b.rotate_v(span_of(a), shape);
        }
        return f32_output(std::move(out), a);
      },
      py::arg("v"), py::arg("backend") = "ref",
      "Per-head FWHT of values [T, H, d] (docs/spec.md §2); self-inverse.");

  m.def(
      "quantize",
      [](const py::object& x, int bits, int64_t group, const std::string& axis, float clip,
         const std::string& zero_point, const std::string& backend) {
        const auto a = input<float>(x, "quantize x");
        if (a.ndim() != 2)
          throw Error("quantize x: shape " + shape_string(shape_of(a)) + ", expected [rows, cols]");
        const QuantParams p = quant_params(bits, group, axis, clip, zero_point);
        const Backend& b = backend_named(backend);
        py::gil_scoped_release release;
        return b.quantize(span_of(a), a.shape(0), a.shape(1), p);
      },
      py::arg("x"), py::arg("bits"), py::arg("group") = 128, py::arg("axis") = "token",
      py::arg("clip") = 1.0f, py::arg("zero_point") = "float", py::arg("backend") = "ref",
      "Asymmetric uniform quantization with packing of float32 x [rows, cols] (docs/spec.md §3): "
      "groups of G along the token axis (G channels of a row) or the channel axis (G rows of a "
      "column). Returns a kvq.Quantized.");

  m.def(
      "dequantize",
      [](const Quantized& q, const std::string& backend) {
        const Backend& b = backend_named(backend);
        std::vector<float> out;
        {
          py::gil_scoped_release release;
          out = b.dequantize(q);
        }
        return output(std::move(out), {q.rows, q.cols});
      },
      py::arg("q"), py::arg("backend") = "ref", "float32 [rows, cols] reconstruction of q.");

  m.def(
      "rotate_quantize",
      [](const py::object& kv, const std::string& rotation, int head_group, const py::object& perm,
         int bits, int64_t group, const std::string& axis, float clip,
         const std::string& zero_point, const std::string& backend) {
        py::array a = py::array::ensure(kv);
        if (!a) throw Error("rotate_quantize kv: expected a numpy array or a CPU tensor");
        const std::string kind = py::str(a.dtype());
        if (kind != "float32" && kind != "float16")
          throw Error("rotate_quantize kv: dtype " + kind + ", expected float32 or float16");
        a = py::array::ensure(a, py::array::c_style);
        RotateQuantizeParams p;
        p.rotation = parse_rotation(rotation);
        p.rotation_params = {head_group, vector_of<int32_t>(perm, "rotate_quantize perm")};
        p.quant = quant_params(bits, group, axis, clip, zero_point);
        const TensorView view{a.data(), kind == "float32" ? DType::F32 : DType::F16, shape_of(a)};
        const KvShape shape = kv_shape(a, "rotate_quantize kv");
        const Backend& b = backend_named(backend);
        py::gil_scoped_release release;
        return b.rotate_quantize(view, shape, p);
      },
      py::arg("kv"), py::arg("rotation") = "key_grouped", py::arg("head_group") = 4,
      py::arg("perm") = py::none(), py::arg("bits") = 2, py::arg("group") = 128,
      py::arg("axis") = "token", py::arg("clip") = 1.0f, py::arg("zero_point") = "float",
      py::arg("backend") = "ref",
      "The fused append path: rotation of K/V rows kv [T, H, d] (float32 or float16; rotation "
      "'key_grouped' = rotate_k, 'per_head' = per-head FWHT, 'none') then quantize + pack, "
      "rows = T, cols = H*d. Bit for bit quantize(rotate(kv)) of the reference.");

  m.def(
      "token_absmax",
      [](const py::object& hidden, const std::string& backend) {
        const auto a = input<float>(hidden, "token_absmax hidden");
        if (a.ndim() != 2)
          throw Error("token_absmax hidden: shape " + shape_string(shape_of(a)) +
                      ", expected [tokens, hidden]");
        const Backend& b = backend_named(backend);
        TokenAbsmax r;
        {
          py::gil_scoped_release release;
          r = b.token_absmax(span_of(a), a.shape(0), a.shape(1));
        }
        const Shape s{a.shape(0)};
        return py::make_tuple(output(std::move(r.absmax), s), output(std::move(r.argmax), s));
      },
      py::arg("hidden"), py::arg("backend") = "ref",
      "Per row of hidden [tokens, hidden]: (max |h|, its lowest channel) (docs/spec.md §4).");

  py::class_<DecodeCache>(m, "DecodeCache",
                          "One layer's quantized KV cache as decode attention reads it "
                          "(docs/spec.md §7); apply_method returns one per layer.")
      .def(py::init([](Quantized k, Quantized v, int64_t heads, int64_t head_dim,
                       const std::string& k_rotation, int head_group, const py::object& perm,
                       bool v_hadamard, bool k_pre_rope, float rope_theta, const py::object& kept,
                       const py::object& k_fp16, const py::object& v_fp16) {
             DecodeCache c;
             c.shape = {k.rows, heads, head_dim};
             c.k_rotation = parse_key_rotation(k_rotation);
             c.k_rotation_params = {head_group, vector_of<int32_t>(perm, "DecodeCache perm")};
             c.v_per_head_hadamard = v_hadamard;
             c.k_pre_rope = k_pre_rope;
             c.rope_theta = rope_theta;
             c.k = std::move(k);
             c.v = std::move(v);
             c.kept = vector_of<uint8_t>(kept, "DecodeCache kept");
             if (!k_fp16.is_none()) c.k_fp16 = half_bits(k_fp16, "DecodeCache k_fp16");
             if (!v_fp16.is_none()) c.v_fp16 = half_bits(v_fp16, "DecodeCache v_fp16");
             return c;
           }),
           py::arg("k"), py::arg("v"), py::arg("heads"), py::arg("head_dim"),
           py::arg("k_rotation") = "none", py::arg("head_group") = 4, py::arg("perm") = py::none(),
           py::arg("v_hadamard") = false, py::arg("k_pre_rope") = false,
           py::arg("rope_theta") = 10000.0f, py::arg("kept") = py::none(),
           py::arg("k_fp16") = py::none(), py::arg("v_fp16") = py::none(),
           "k, v: kvq.Quantized [tokens, heads*head_dim]; k_rotation 'none', 'grouped' "
           "(rotate_k with head_group, perm) or 'per_head'; kept: uint8 [tokens] flags whose "
           "rows come from k_fp16 / v_fp16 (float16 [tokens, heads*head_dim]).")
      .def_property_readonly("tokens", [](const DecodeCache& c) { return c.shape.tokens; })
      .def_property_readonly("heads", [](const DecodeCache& c) { return c.shape.heads; })
      .def_property_readonly("head_dim", [](const DecodeCache& c) { return c.shape.head_dim; })
      .def_property_readonly("k_rotation",
                             [](const DecodeCache& c) { return key_rotation_name(c.k_rotation); })
      .def_readonly("k_pre_rope", &DecodeCache::k_pre_rope)
      .def("keys", [](const DecodeCache& c) {
        return output(reconstruct_keys(c), {c.shape.tokens, c.shape.heads, c.shape.head_dim});
      }, "reconstructed K, float32 [tokens, heads, head_dim], post-RoPE, original basis")
      .def("values", [](const DecodeCache& c) {
        return output(reconstruct_values(c), {c.shape.tokens, c.shape.heads, c.shape.head_dim});
      }, "reconstructed V, float32 [tokens, heads, head_dim]");

  m.def(
      "attention_decode",
      [](const py::object& q, const DecodeCache& cache, const std::string& backend) {
        const auto a = input<float>(q, "attention_decode q");
        if (a.ndim() != 2)
          throw Error("attention_decode q: shape " + shape_string(shape_of(a)) +
                      ", expected [q_heads, head_dim]");
        const Backend& b = backend_named(backend);
        std::vector<float> out;
        {
          py::gil_scoped_release release;
          out = b.attention_decode(span_of(a), a.shape(0), cache);
        }
        return f32_output(std::move(out), a);
      },
      py::arg("q"), py::arg("cache"), py::arg("backend") = "ref",
      "Decode attention of the newest position's post-RoPE query q [q_heads, head_dim] over a "
      "kvq.DecodeCache (docs/spec.md §7, a tolerance op); returns [q_heads, head_dim].");

  m.def(
      "attention_decode_oracle",
      [](const py::object& q, const DecodeCache& cache) {
        const auto a = input<float>(q, "attention_decode_oracle q");
        if (a.ndim() != 2)
          throw Error("attention_decode_oracle q: shape " + shape_string(shape_of(a)) +
                      ", expected [q_heads, head_dim]");
        return output(attention_decode_oracle(span_of(a), a.shape(0), cache), shape_of(a));
      },
      py::arg("q"), py::arg("cache"),
      "The fp64 oracle of attention_decode over the same reconstructed K and V (float64).");
}

}  // namespace kvq::py_bind
