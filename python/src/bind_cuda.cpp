// CUDA tensors for the cuda backend without a host round trip (kvq/_cuda.py wraps these;
// fwht, rotate_k, rotate_v, quantize, dequantize, rotate_quantize):
// inputs arrive through DLPack (any producer's __dlpack__: torch, CuPy, JAX), the CUDA
// backend's own kernels (backends/cuda/kernels.h) run on the device memory they point to, and
// results are new device allocations handed back through DLPack (torch.from_dlpack), so data
// never visits the host. Validation is the CUDA backend's: shapes, bits, rotation and
// permutation rules on the host (parameters only), the finiteness of the input by the caller
// on the device (kvq/_cuda.py), fp16 overflow of a group's scale from the kernels' flag.
// Kernels run on the legacy default stream; __dlpack__ orders the producer's work before it.
#include <pybind11/stl.h>

#include "python/src/arrays.h"
#include "python/src/bindings.h"

#ifdef KVQ_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "backends/cuda/cuda_error.h"
#include "backends/cuda/device_buffer.h"
#include "backends/cuda/device_quant.h"
#include "backends/cuda/kernels.h"
#include "reference/fwht.h"
#include "reference/rotation.h"
#endif

namespace kvq::py_bind {

#ifdef KVQ_HAVE_CUDA
namespace {

// DLPack's stable C ABI (dlpack.h v0.8; the subset read and written here).
struct DLDevice {
  int32_t device_type;  // kDLCUDA = 2
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;  // 0 int, 1 uint, 2 float, 4 bfloat
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // null: compact row-major
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};
constexpr int32_t kDLCUDA = 2;

// A CUDA input: the producer's capsule stays referenced (and so its memory alive) while the
// view is used; the capsule is never renamed, so its own destructor releases the tensor.
struct DeviceInput {
  py::object capsule;
  const DLTensor* t = nullptr;
  Shape shape;

  DeviceInput(const py::object& obj, const std::string& what) {
    if (!py::hasattr(obj, "__dlpack__") || !py::hasattr(obj, "__dlpack_device__"))
      throw Error(what + ": expected a CUDA tensor (an object with __dlpack__)");
    const auto device_type = obj.attr("__dlpack_device__")().cast<py::tuple>()[0].cast<int>();
    if (device_type != kDLCUDA)
      throw Error(what + ": not a CUDA tensor (DLPack device type " +
                  std::to_string(device_type) + "); host arrays take the host path");
    capsule = obj.attr("__dlpack__")(py::arg("stream") = 1);  // 1: the legacy default stream
    auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
    if (!m) throw py::error_already_set();
    t = &m->dl_tensor;
    shape.assign(t->shape, t->shape + t->ndim);
    if (t->strides) {  // compact row-major only
      int64_t expect = 1;
      for (int32_t i = t->ndim; i-- > 0;) {
        if (t->shape[i] != 1 && t->strides[i] != expect)
          throw Error(what + ": not contiguous (call .contiguous())");
        expect *= t->shape[i];
      }
    }
    int device = 0;
    cuda::check(cudaGetDevice(&device), "cudaGetDevice");
    if (device != t->device.device_id)
      throw Error(what + ": on CUDA device " + std::to_string(t->device.device_id) +
                  ", the cuda backend runs on device " + std::to_string(device));
  }
  const void* data() const { return static_cast<const char*>(t->data) + t->byte_offset; }
  int64_t numel() const { return shape_numel(shape, "tensor"); }
  bool is(uint8_t code, uint8_t bits) const {
    return t->dtype.code == code && t->dtype.bits == bits && t->dtype.lanes == 1;
  }
  void require(uint8_t code, uint8_t bits, const std::string& what, const char* name) const {
    if (!is(code, bits)) throw Error(what + ": dtype is not " + name);
  }
};

// A device allocation handed to Python, exported through DLPack (torch.from_dlpack(array)).
struct DeviceArray {
  std::shared_ptr<cuda::DeviceBuffer<uint8_t>> buffer;
  Shape shape;
  DLDataType dtype{2, 32, 1};
  std::vector<int64_t> dims;  // what the DLTensor's shape points at

  DeviceArray(Shape s, DLDataType type) : shape(std::move(s)), dtype(type), dims(shape) {
    const int64_t bytes = shape_numel(shape, "device array") * (dtype.bits / 8);
    buffer = std::make_shared<cuda::DeviceBuffer<uint8_t>>(static_cast<size_t>(bytes));
  }
  void* data() const { return buffer->get(); }
};

struct Export {
  DLManagedTensor managed;
  std::shared_ptr<cuda::DeviceBuffer<uint8_t>> buffer;  // keeps the memory alive
  std::vector<int64_t> dims;
};

py::capsule to_dlpack(const DeviceArray& a, const py::object& stream) {
  // Kernels ran on the legacy default stream: a consumer on another stream waits for them.
  if (!stream.is_none() && stream.cast<int64_t>() != 1)
    cuda::check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize");
  int device = 0;
  cuda::check(cudaGetDevice(&device), "cudaGetDevice");
  auto* e = new Export{{}, a.buffer, a.dims};
  e->managed.dl_tensor = {a.data(), {kDLCUDA, device}, static_cast<int32_t>(e->dims.size()),
                          a.dtype, e->dims.data(), nullptr, 0};
  e->managed.manager_ctx = e;
  e->managed.deleter = [](DLManagedTensor* m) { delete static_cast<Export*>(m->manager_ctx); };
  // An unconsumed capsule frees the export itself; a consumer renames it and calls deleter.
  return py::capsule(&e->managed, "dltensor", [](PyObject* cap) {
    if (PyCapsule_IsValid(cap, "dltensor")) {
      auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
      m->deleter(m);
    }
  });
}

// A quantization left on the device: codes, scales, zeros as DeviceArrays.
struct DeviceQuantized {
  int64_t rows = 0, cols = 0;
  QuantParams params;
  DeviceArray codes, scale, zero, zero_int;
};

DeviceQuantized make_device_quantized(int64_t rows, int64_t cols, const QuantParams& p,
                                      const GroupLayout& l) {
  DeviceQuantized q{rows, cols, p,
                    DeviceArray({l.total_bytes()}, {1, 8, 1}),
                    DeviceArray({l.group_count}, {2, 16, 1}),
                    DeviceArray({l.group_count}, {2, 16, 1}),
                    DeviceArray({l.group_count}, {1, 8, 1})};
  for (DeviceArray* a : {&q.codes, &q.scale, &q.zero, &q.zero_int})
    if (a->buffer->size()) cuda::check(cudaMemset(a->data(), 0, a->buffer->size()), "cudaMemset");
  return q;
}

// Waits for the kernels, then reads their one overflow flag (8 bytes, not the data).
void finish(const cuda::DeviceBuffer<int64_t>& bad, const GroupLayout& l, const std::string& what) {
  cuda::check(cudaDeviceSynchronize(), what.c_str());
  cuda::check_bad_group(l, bad.download()[0], what);
}

cuda::DeviceBuffer<int64_t> bad_flag(const GroupLayout& l) {
  const int64_t none = l.group_count;
  return cuda::DeviceBuffer<int64_t>(std::span<const int64_t>(&none, 1));
}

QuantParams quant_params_of(int bits, int64_t group, const std::string& axis, float clip,
                            const std::string& zero_point) {
  QuantParams p;
  p.bits = bits;
  p.group = group;
  if (axis != "token" && axis != "channel")
    throw Error("axis must be 'token' or 'channel', got '" + axis + "'");
  p.axis = axis == "token" ? Axis::Token : Axis::Channel;
  p.clip = clip;
  p.zero_point = parse_zero_point(zero_point);
  return p;
}

DeviceArray fwht_device(const py::object& x, int n) {
  const DeviceInput in(x, "fwht x");
  in.require(2, 32, "fwht x", "float32");
  const float scale = fwht_scale(n);  // validates n as the reference does
  const int64_t count = in.numel();
  if (count % n != 0)
    throw Error("fwht: input has " + std::to_string(count) +
                " values, not a multiple of the transform size n = " + std::to_string(n));
  DeviceArray out(in.shape, {2, 32, 1});
  if (count) {
    cuda::check(cudaMemcpyAsync(out.data(), in.data(), static_cast<size_t>(count) * 4,
                                cudaMemcpyDeviceToDevice, nullptr), "fwht copy");
    cuda::fwht(static_cast<float*>(out.data()), count, n, scale, nullptr);
    cuda::check_launch("fwht");
  }
  return out;
}

// K/V rows [T, H, d] float32 on the device, validated as the CUDA backend validates them.
KvShape device_kv_shape(const DeviceInput& in, const std::string& what) {
  in.require(2, 32, what, "float32");
  if (in.shape.size() != 3)
    throw Error(what + ": shape " + shape_string(in.shape) + ", expected [T, H, d]");
  return {in.shape[0], in.shape[1], in.shape[2]};
}

DeviceArray copy_of(const DeviceInput& in) {
  DeviceArray out(in.shape, {2, 32, 1});
  if (const int64_t n = in.numel())
    cuda::check(cudaMemcpyAsync(out.data(), in.data(), static_cast<size_t>(n) * 4,
                                cudaMemcpyDeviceToDevice, nullptr), "copy");
  return out;
}

DeviceArray rotate_k_device(const py::object& k, int head_group, const py::object& perm) {
  const DeviceInput in(k, "rotate_k k_pre_rope");
  const KvShape shape = device_kv_shape(in, "rotate_k k_pre_rope");
  check_rotation_shape(shape, head_group);
  const std::vector<int32_t> p = vector_of<int32_t>(perm, "rotate_k perm");
  if (!p.empty()) check_permutation(p, shape.channels(), "rotate_k");
  const int n = static_cast<int>(head_group * shape.head_dim);
  DeviceArray out = copy_of(in);
  auto* x = static_cast<float*>(out.data());
  if (in.numel()) cuda::fwht(x, in.numel(), n, fwht_scale(n), nullptr);
  if (p.empty() || !in.numel()) return out;
  DeviceArray reordered(in.shape, {2, 32, 1});
  const cuda::DeviceBuffer<int32_t> pd{std::span<const int32_t>(p)};
  cuda::reorder(x, static_cast<float*>(reordered.data()), shape.tokens, shape.channels(),
                pd.get(), false, nullptr);
  cuda::check(cudaStreamSynchronize(nullptr), "rotate_k");  // pd is freed on return
  return reordered;
}

DeviceArray rotate_v_device(const py::object& v) {
  const DeviceInput in(v, "rotate_v v");
  const KvShape shape = device_kv_shape(in, "rotate_v v");
  check_value_rotation(shape);
  const int n = static_cast<int>(shape.head_dim);
  DeviceArray out = copy_of(in);
  if (in.numel()) cuda::fwht(static_cast<float*>(out.data()), in.numel(), n, fwht_scale(n), nullptr);
  cuda::check_launch("rotate_v");
  return out;
}

DeviceQuantized quantize_device(const py::object& x, int bits, int64_t group,
                                const std::string& axis, float clip,
                                const std::string& zero_point) {
  const DeviceInput in(x, "quantize x");
  in.require(2, 32, "quantize x", "float32");
  if (in.shape.size() != 2)
    throw Error("quantize x: shape " + shape_string(in.shape) + ", expected [rows, cols]");
  const QuantParams p = quant_params_of(bits, group, axis, clip, zero_point);
  const GroupLayout l = group_layout(in.shape[0], in.shape[1], p);
  DeviceQuantized q = make_device_quantized(in.shape[0], in.shape[1], p, l);
  const auto bad = bad_flag(l);
  cuda::quantize(static_cast<const float*>(in.data()), cuda::device_layout(l, p),
                 static_cast<uint8_t*>(q.codes.data()), static_cast<uint16_t*>(q.scale.data()),
                 static_cast<uint16_t*>(q.zero.data()), static_cast<uint8_t*>(q.zero_int.data()),
                 bad.get(), nullptr);
  finish(bad, l, "x");
  return q;
}

DeviceArray dequantize_device(const DeviceQuantized& q) {
  const GroupLayout l = group_layout(q.rows, q.cols, q.params);
  DeviceArray out({q.rows, q.cols}, {2, 32, 1});
  cuda::dequantize(static_cast<const uint8_t*>(q.codes.data()),
                   static_cast<const uint16_t*>(q.scale.data()),
                   static_cast<const uint16_t*>(q.zero.data()),
                   static_cast<const uint8_t*>(q.zero_int.data()), cuda::device_layout(l, q.params),
                   static_cast<float*>(out.data()), nullptr);
  cuda::check_launch("dequantize");
  return out;
}

// The fused append path on device rows kv [T, H, d] (F32/F16/BF16), token axis: the kernel the
// CUDA backend runs when its tile fits (cols % 8 == 0, cols * 9 <= 200 KiB); other shapes are
// an error naming the host path.
DeviceQuantized rotate_quantize_device(const py::object& kv, const std::string& rotation,
                                       int head_group, const py::object& perm, int bits,
                                       int64_t group, const std::string& axis, float clip,
                                       const std::string& zero_point) {
  const std::string what = "rotate_quantize input";
  const DeviceInput in(kv, what);
  cuda::InputType type = cuda::InputType::F32;
  if (in.is(2, 16)) type = cuda::InputType::F16;
  else if (in.is(4, 16)) type = cuda::InputType::BF16;
  else in.require(2, 32, what, "float32, float16 or bfloat16");
  if (in.shape.size() != 3)
    throw Error("rotate_quantize kv: shape " + shape_string(in.shape) + ", expected [T, H, d]");
  const KvShape shape{in.shape[0], in.shape[1], in.shape[2]};
  const QuantParams p = quant_params_of(bits, group, axis, clip, zero_point);
  const std::vector<int32_t> perm_host = vector_of<int32_t>(perm, "rotate_quantize perm");
  int n = 0;
  if (rotation == "key_grouped") {
    check_rotation_shape(shape, head_group);
    if (!perm_host.empty()) check_permutation(perm_host, shape.channels(), "rotate_k");
    n = static_cast<int>(head_group * shape.head_dim);
  } else if (rotation == "per_head") {
    check_value_rotation(shape);
    n = static_cast<int>(shape.head_dim);
  } else if (rotation != "none") {
    throw Error("rotation must be 'none', 'key_grouped' or 'per_head', got '" + rotation + "'");
  }
  const int64_t rows = shape.tokens, cols = shape.channels();
  if (p.axis != Axis::Token || cols % 8 != 0 || cols * 9 > 200 * 1024)
    throw Error("rotate_quantize of a CUDA tensor: the fused kernel needs the token axis and "
                "H*d a multiple of 8 up to 22755; pass host arrays for this shape");
  const GroupLayout l = group_layout(rows, cols, p);
  DeviceQuantized q = make_device_quantized(rows, cols, p, l);
  const auto bad = bad_flag(l);
  cuda::DeviceBuffer<int32_t> perm_device;
  if (!perm_host.empty()) perm_device = cuda::DeviceBuffer<int32_t>(std::span<const int32_t>(perm_host));
  cuda::FusedAppend a;
  a.input = type;
  a.rotation = n ? 1 : 0;
  a.fwht_n = n;
  a.fwht_scale = n ? fwht_scale(n) : 0.0f;
  a.perm = perm_host.empty() ? nullptr : perm_device.get();
  if (rows > 0)
    cuda::rotate_quantize_token(in.data(), a, cuda::device_layout(l, p),
                                static_cast<uint8_t*>(q.codes.data()),
                                static_cast<uint16_t*>(q.scale.data()),
                                static_cast<uint16_t*>(q.zero.data()),
                                static_cast<uint8_t*>(q.zero_int.data()), bad.get(), nullptr);
  finish(bad, l, what);
  return q;
}

Quantized to_host(const DeviceQuantized& d) {
  cuda::check(cudaDeviceSynchronize(), "DeviceQuantized.to_host");
  const GroupLayout l = group_layout(d.rows, d.cols, d.params);
  Quantized q = make_quantized(d.rows, d.cols, d.params, l);
  const auto down = [](auto& v, const DeviceArray& a) {
    if (!v.empty())
      cuda::check(cudaMemcpy(v.data(), a.data(), v.size() * sizeof(v[0]), cudaMemcpyDeviceToHost),
                  "download");
  };
  down(q.codes, d.codes);
  down(q.scale, d.scale);
  down(q.zero, d.zero);
  down(q.zero_int, d.zero_int);
  return q;
}

}  // namespace
#endif

void bind_cuda(py::module_& m) {
#ifdef KVQ_HAVE_CUDA
  m.attr("cuda_built") = true;
  py::module_ c = m.def_submodule("cuda", "device-resident ops of the cuda backend (DLPack)");
  py::class_<DeviceArray>(c, "DeviceArray", "A CUDA allocation; torch.from_dlpack(a) wraps it.")
      .def_readonly("shape", &DeviceArray::shape)
      .def("__dlpack__", &to_dlpack, py::arg("stream") = py::none())
      .def("__dlpack_device__", [](const DeviceArray&) {
        int device = 0;
        cuda::check(cudaGetDevice(&device), "cudaGetDevice");
        return py::make_tuple(kDLCUDA, device);
      });
  py::class_<DeviceQuantized>(c, "DeviceQuantized",
                              "A quantization on the device (kvq.Quantized's fields as "
                              "DeviceArrays); to_host() downloads it as a kvq.Quantized.")
      .def_readonly("rows", &DeviceQuantized::rows)
      .def_readonly("cols", &DeviceQuantized::cols)
      .def_readonly("codes", &DeviceQuantized::codes)
      .def_readonly("scale", &DeviceQuantized::scale)
      .def_readonly("zero", &DeviceQuantized::zero)
      .def_readonly("zero_int", &DeviceQuantized::zero_int)
      .def("to_host", &to_host);
  c.def("fwht", &fwht_device, py::arg("x"), py::arg("n"));
  c.def("rotate_k", &rotate_k_device, py::arg("k_pre_rope"), py::arg("head_group"),
        py::arg("perm"));
  c.def("rotate_v", &rotate_v_device, py::arg("v"));
  c.def("quantize", &quantize_device, py::arg("x"), py::arg("bits"), py::arg("group"),
        py::arg("axis"), py::arg("clip"), py::arg("zero_point"));
  c.def("dequantize", &dequantize_device, py::arg("q"));
  c.def("rotate_quantize", &rotate_quantize_device, py::arg("kv"), py::arg("rotation"),
        py::arg("head_group"), py::arg("perm"), py::arg("bits"), py::arg("group"),
        py::arg("axis"), py::arg("clip"), py::arg("zero_point"));
#else
  m.attr("cuda_built") = false;
#endif
}

}  // namespace kvq::py_bind
