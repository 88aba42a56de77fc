// The CUDA backend behind the Backend interface: validation as the reference does it (same
// rules, errors naming the tensor and index), then upload, kernels (kernels.h), download.
//
// attention_decode takes one of two paths (docs/spec.md §7 is a tolerance op, so both are gated
// against the fp64 oracle): the packed path reads the quantized cache as stored (token axis,
// float zero point, b in {1, 2, 4, 8}, groups tiling each row, K post-RoPE with no rotation or
// a per-head Hadamard folded into q, V with or without a per-head Hadamard folded after the
// weighted sum, fp16 kept rows); every other cache form is reconstructed first with the
// reference's exact reconstruct_keys / reconstruct_values and attended by the dense GPU kernel.
// That covers the pre-RoPE caches: RoPE_j depends on the token position and does not commute
// with the (grouped, head-mixing, reordered) rotation, so neither can be folded into q; those
// caches pay one dequantize + inverse rotation + RoPE pass before the attention.
#include "backends/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "backends/cuda/cuda_error.h"
#include "backends/cuda/device_buffer.h"
#include "backends/cuda/device_quant.h"
#include "backends/cuda/kernels.h"
#include "reference/attention.h"
#include "reference/error.h"
#include "reference/fwht.h"
#include "reference/half.h"
#include "reference/rotation.h"

namespace kvq {

namespace {

using cuda::DeviceBuffer;
using cuda::device_layout;

bool is_pow2_size(int64_t n) { return n >= 2 && n <= 32768 && (n & (n - 1)) == 0; }

// Device outputs of one quantization, downloaded into a Quantized (or the error of its lowest
// failing group, worded as the reference's).
struct DeviceQuantized {
  DeviceBuffer<uint8_t> codes;
  DeviceBuffer<uint16_t> scale, zero;
  DeviceBuffer<uint8_t> zero_int;
  DeviceBuffer<int64_t> bad;
  explicit DeviceQuantized(const GroupLayout& l)
      : codes(static_cast<size_t>(l.total_bytes())),
        scale(static_cast<size_t>(l.group_count)),
        zero(static_cast<size_t>(l.group_count)),
        zero_int(static_cast<size_t>(l.group_count)),
        bad(1) {
    codes.zero();
    scale.zero();
    zero.zero();
    zero_int.zero();
    const int64_t none = l.group_count;
    bad.upload(std::span<const int64_t>(&none, 1));
  }
};

Quantized finish_quantized(DeviceQuantized& d, const GroupLayout& l, int64_t rows, int64_t cols,
                           const QuantParams& params, const std::string& what) {
  cuda::check(cudaDeviceSynchronize(), what.c_str());
  cuda::check_bad_group(l, d.bad.download()[0], what);
  Quantized q;
  q.rows = rows;
  q.cols = cols;
  q.params = params;
  q.codes = d.codes.download();
  q.scale = d.scale.download();
  if (params.zero_point == ZeroPoint::Float)
    q.zero = d.zero.download();
  else
    q.zero_int = d.zero_int.download();
  return q;
}

bool half_finite(uint16_t h) { return (h & 0x7C00u) != 0x7C00u; }

// docs/spec.md §0 for the raw input of rotate_quantize, without widening on the host.
void require_finite_view(const TensorView& kv, const std::string& what) {
  const int64_t n = kv.numel();
  for (int64_t i = 0; i < n; ++i) {
    bool ok = true;
    float value = 0.0f;
    if (kv.dtype == DType::F32) {
      value = static_cast<const float*>(kv.data)[i];
      ok = std::isfinite(value);
    } else {
      const uint16_t h = static_cast<const uint16_t*>(kv.data)[i];
      ok = kv.dtype == DType::F16 ? half_finite(h) : (h & 0x7F80u) != 0x7F80u;
      if (!ok) value = kv.dtype == DType::F16 ? half_to_float(h) : bf16_to_float(h);
    }
    if (!ok)
      throw Error(what + ": non-finite value " + std::to_string(value) + " at index " +
                  std::to_string(i));
  }
}

class CudaBackend final : public Backend {
 public:
  std::string name() const override { return "cuda"; }
  bool supports(Op) const override { return true; }

  void fwht(std::span<float> x, int n) const override {
    const float s = fwht_scale(n);  // validates n as the reference does
    if (x.size() % static_cast<size_t>(n) != 0)
      throw Error("fwht: input has " + std::to_string(x.size()) +
                  " values, not a multiple of the transform size n = " + std::to_string(n));
    DeviceBuffer<float> d(std::span<const float>(x.data(), x.size()));
    cuda::fwht(d.get(), static_cast<int64_t>(x.size()), n, s, nullptr);
    d.download_to(x);
  }

  std::vector<float> reorder(std::span<const float> x, int64_t rows,
                             std::span<const int32_t> perm) const override {
    check_reorder_input(x.size(), rows, perm, "reorder");
    const auto channels = static_cast<int64_t>(perm.size());
    DeviceBuffer<float> in(x), out(x.size());
    DeviceBuffer<int32_t> p(perm);
    cuda::reorder(in.get(), out.get(), rows, channels, p.get(), false, nullptr);
    return out.download();
  }

  std::vector<float> rotate_k(std::span<const float> k_pre_rope, const KvShape& shape,
                              const RotationParams& params) const override {
    check_rotate_k_input(k_pre_rope, shape, params);
    const int n = static_cast<int>(params.head_group * shape.head_dim);
    DeviceBuffer<float> d(k_pre_rope);
    cuda::fwht(d.get(), static_cast<int64_t>(k_pre_rope.size()), n, fwht_scale(n), nullptr);
    if (params.perm.empty()) return d.download();
    DeviceBuffer<float> out(k_pre_rope.size());
    DeviceBuffer<int32_t> p(std::span<const int32_t>(params.perm));
    cuda::reorder(d.get(), out.get(), shape.tokens, shape.channels(), p.get(), false, nullptr);
    return out.download();
  }

  std::vector<float> rotate_v(std::span<const float> v, const KvShape& shape) const override {
    check_kv_size(v.size(), shape, "rotate_v");
    check_value_rotation(shape);
    require_finite(v, "rotate_v input");
    const int n = static_cast<int>(shape.head_dim);
    DeviceBuffer<float> d(v);
    cuda::fwht(d.get(), static_cast<int64_t>(v.size()), n, fwht_scale(n), nullptr);
    return d.download();
  }

  Quantized quantize(std::span<const float> x, int64_t rows, int64_t cols,
                     const QuantParams& params) const override {
    const GroupLayout l = group_layout(rows, cols, params);
    if (static_cast<int64_t>(x.size()) != rows * cols)
      throw Error("x: input has " + std::to_string(x.size()) + " values, shape [" +
                  std::to_string(rows) + ", " + std::to_string(cols) + "] needs " +
                  std::to_string(rows * cols));
    require_finite(x, "x");
    DeviceBuffer<float> in(x);
    DeviceQuantized out(l);
    cuda::quantize(in.get(), device_layout(l, params), out.codes.get(), out.scale.get(),
                   out.zero.get(), out.zero_int.get(), out.bad.get(), nullptr);
    return finish_quantized(out, l, rows, cols, params, "x");
  }

  std::vector<float> dequantize(const Quantized& q) const override {
    const GroupLayout l = group_layout(q.rows, q.cols, q.params);
    check_quantized(q, l, "dequantize");
    DeviceBuffer<uint8_t> codes(std::span<const uint8_t>(q.codes));
    DeviceBuffer<uint16_t> scale(std::span<const uint16_t>(q.scale));
    DeviceBuffer<uint16_t> zero(std::span<const uint16_t>(q.zero));
    DeviceBuffer<uint8_t> zero_int(std::span<const uint8_t>(q.zero_int));
    DeviceBuffer<float> out(static_cast<size_t>(q.rows * q.cols));
    cuda::dequantize(codes.get(), scale.get(), zero.get(), zero_int.get(),
                     device_layout(l, q.params), out.get(), nullptr);
    return out.download();
  }

  Quantized rotate_quantize(const TensorView& kv, const KvShape& shape,
                            const RotateQuantizeParams& params) const override {
    if (kv.numel() != shape.tokens * shape.channels())
      throw Error("rotate_quantize: input has " + std::to_string(kv.numel()) +
                  " elements, shape [tokens, heads, head_dim] needs " +
                  std::to_string(shape.tokens * shape.channels()));
    if (kv.dtype != DType::F32 && kv.dtype != DType::F16 && kv.dtype != DType::BF16)
      throw Error(std::string("rotate_quantize input: dtype ") + dtype_name(kv.dtype) +
                  " cannot be widened to fp32");
    require_finite_view(kv, "rotate_quantize input");
    int n = 0;
    const int32_t* perm_host = nullptr;
    switch (params.rotation) {
      case AppendRotation::None: break;
      case AppendRotation::KeyGrouped:
        check_rotation_shape(shape, params.rotation_params.head_group);
        check_kv_size(static_cast<size_t>(kv.numel()), shape, "rotate_k");
        if (!params.rotation_params.perm.empty()) {
          check_permutation(params.rotation_params.perm, shape.channels(), "rotate_k");
          perm_host = params.rotation_params.perm.data();
        }
        n = static_cast<int>(params.rotation_params.head_group * shape.head_dim);
        break;
      case AppendRotation::PerHead:
        check_kv_size(static_cast<size_t>(kv.numel()), shape, "rotate_v");
        check_value_rotation(shape);
        n = static_cast<int>(shape.head_dim);
        break;
    }
    const int64_t rows = shape.tokens, cols = shape.channels();
    const GroupLayout l = group_layout(rows, cols, params.quant);
    const cuda::InputType in = kv.dtype == DType::F32   ? cuda::InputType::F32
                               : kv.dtype == DType::F16 ? cuda::InputType::F16
                                                        : cuda::InputType::BF16;
    DeviceBuffer<uint8_t> raw(kv.nbytes());
    if (kv.nbytes() > 0)
      cuda::check(cudaMemcpy(raw.get(), kv.data, kv.nbytes(), cudaMemcpyHostToDevice), "upload");
    DeviceBuffer<int32_t> perm(perm_host ? std::span<const int32_t>(params.rotation_params.perm)
                                         : std::span<const int32_t>());
    DeviceQuantized out(l);
    const cuda::DeviceQuantLayout dl = device_layout(l, params.quant);
    // Fused when the kernel's tile fits shared memory and its 16-byte loads stay aligned.
    const bool fused = params.quant.axis == Axis::Token && cols % 8 == 0 &&
                       cols * 9 <= 200 * 1024 && rows > 0;
    if (fused) {
      cuda::FusedAppend a;
      a.input = in;
      a.rotation = params.rotation == AppendRotation::None ? 0 : 1;
      a.fwht_n = n;
      a.fwht_scale = n ? fwht_scale(n) : 0.0f;
      a.perm = perm_host ? perm.get() : nullptr;
      cuda::rotate_quantize_token(raw.get(), a, dl, out.codes.get(), out.scale.get(),
                                  out.zero.get(), out.zero_int.get(), out.bad.get(), nullptr);
    } else {
      const auto count = static_cast<int64_t>(kv.numel());
      DeviceBuffer<float> x(static_cast<size_t>(count));
      cuda::widen(raw.get(), in, count, x.get(), nullptr);
      if (n) cuda::fwht(x.get(), count, n, fwht_scale(n), nullptr);
      const float* source = x.get();
      DeviceBuffer<float> reordered;
      if (perm_host) {
        reordered = DeviceBuffer<float>(static_cast<size_t>(count));
        cuda::reorder(x.get(), reordered.get(), rows, cols, perm.get(), false, nullptr);
        source = reordered.get();
      }
      cuda::quantize(source, dl, out.codes.get(), out.scale.get(), out.zero.get(),
                     out.zero_int.get(), out.bad.get(), nullptr);
    }
    return finish_quantized(out, l, rows, cols, params.quant, "rotate_quantize input");
  }

  TokenAbsmax token_absmax(std::span<const float> hidden, int64_t tokens,
                           int64_t hidden_size) const override {
    const std::string what = "token_absmax hidden";
    check_hidden_shape(hidden.size(), tokens, hidden_size, what);
    require_finite(hidden, what);
    DeviceBuffer<float> h(hidden), absmax(static_cast<size_t>(tokens));
    DeviceBuffer<int32_t> argmax(static_cast<size_t>(tokens));
    cuda::token_absmax(h.get(), tokens, hidden_size, absmax.get(), argmax.get(), nullptr);
    TokenAbsmax out;
    out.absmax = absmax.download();
    out.argmax = argmax.download();
    return out;
  }

  std::vector<ExpertStat> expert_statistics(std::span<const int32_t> ids,
                                            std::span<const float> down_absmax,
                                            std::span<const int32_t> down_argmax, int64_t tokens,
                                            int64_t top_k, int64_t num_experts) const override {
    if (tokens < 0 || top_k < 1 || num_experts < 1)
      throw Error("expert_statistics: tokens (" + std::to_string(tokens) +
                  ") must be >= 0, top_k (" + std::to_string(top_k) + ") and experts (" +
                  std::to_string(num_experts) + ") positive");
    const int64_t n = shape_numel({tokens, top_k}, "expert_statistics ids");
    if (static_cast<int64_t>(ids.size()) != n || static_cast<int64_t>(down_absmax.size()) != n)
      throw Error("expert_statistics: experts.ids has " + std::to_string(ids.size()) +
                  " values and experts.down_absmax " + std::to_string(down_absmax.size()) +
                  ", [tokens, top_k] needs " + std::to_string(n));
    if (!down_argmax.empty() && static_cast<int64_t>(down_argmax.size()) != n)
      throw Error("expert_statistics: experts.down_argmax has " +
                  std::to_string(down_argmax.size()) + " values, [tokens, top_k] needs " +
                  std::to_string(n));
    if (n >= 0xFFFFFFFFLL)
      throw Error("expert_statistics: " + std::to_string(n) +
                  " routed entries exceed the CUDA kernel's 32-bit index");
    require_finite(down_absmax, "experts.down_absmax");
    for (int64_t t = 0; t < tokens; ++t)  // the reference's checks, in its order
      for (int64_t s = 0; s < top_k; ++s) {
        const auto i = static_cast<size_t>(t * top_k + s);
        if (ids[i] < 0 || ids[i] >= num_experts)
          throw Error("expert_statistics: experts.ids[" + std::to_string(t) + ", " +
                      std::to_string(s) + "] = " + std::to_string(ids[i]) + " is outside [0, " +
                      std::to_string(num_experts) + ")");
        if (down_absmax[i] < 0.0f)
          throw Error("expert_statistics: experts.down_absmax[" + std::to_string(t) + ", " +
                      std::to_string(s) + "] is negative");
        if (!down_argmax.empty() && down_argmax[i] < 0)
          throw Error("expert_statistics: experts.down_argmax[" + std::to_string(t) + ", " +
                      std::to_string(s) + "] is negative");
      }
    std::vector<ExpertStat> out(static_cast<size_t>(num_experts));
    if (n == 0) return out;
    DeviceBuffer<int32_t> d_ids(ids);
    DeviceBuffer<float> d_abs(down_absmax);
    DeviceBuffer<unsigned long long> key(static_cast<size_t>(num_experts));
    key.zero();
    cuda::expert_statistics(d_ids.get(), d_abs.get(), n, key.get(), nullptr);
    const std::vector<unsigned long long> keys = key.download();
    for (size_t e = 0; e < keys.size(); ++e) {
      if (keys[e] == 0) continue;  // never routed
      const auto flat = static_cast<int64_t>(0xFFFFFFFFu - static_cast<uint32_t>(keys[e]));
      uint32_t bits = static_cast<uint32_t>(keys[e] >> 32);
      float value;
      std::memcpy(&value, &bits, sizeof value);
      out[e].max_abs = value;
      out[e].token = static_cast<int32_t>(flat / top_k);
      out[e].channel = down_argmax.empty() ? -1 : down_argmax[static_cast<size_t>(flat)];
    }
    return out;
  }

  std::vector<float> attention_decode(std::span<const float> q, int64_t q_heads,
                                      const DecodeCache& cache) const override;
};

// The cache forms the packed kernel reads as stored (see the file comment).
bool packed_form(const DecodeCache& c) {
  if (!c.k_f32.empty() || !c.v_f32.empty() || !c.k_parts.empty() || !c.v_parts.empty())
    return false;
  if (!c.k_outliers.index.empty() || !c.v_outliers.index.empty()) return false;
  if (c.k_pre_rope || c.k_rotation == KeyRotation::GroupedHadamard) return false;
  const QuantParams& a = c.k.params;
  const QuantParams& b = c.v.params;
  if (a.bits != b.bits || a.group != b.group || a.axis != b.axis || a.axis != Axis::Token ||
      a.zero_point != ZeroPoint::Float || b.zero_point != ZeroPoint::Float)
    return false;
  const int64_t cols = c.shape.channels();
  return c.k.rows == c.shape.tokens && c.v.rows == c.shape.tokens && c.k.cols == cols &&
         c.v.cols == cols;
}

// Kept rows of one of K or V: slot per token (-1 = quantized) and the compact fp32 rows,
// checked as reference/attention.cpp does.
void kept_rows(const std::vector<uint8_t>& kept, const std::vector<uint16_t>& fp16,
               int64_t tokens, int64_t channels, const std::string& what,
               std::vector<int32_t>& slot, std::vector<float>& rows) {
  if (!kept.empty() && static_cast<int64_t>(kept.size()) != tokens)
    throw Error(what + ": kept has " + std::to_string(kept.size()) + " flags for " +
                std::to_string(tokens) + " tokens");
  bool any = false;
  for (uint8_t k : kept) any = any || k;
  if (any && static_cast<int64_t>(fp16.size()) != tokens * channels)
    throw Error(what + ": fp16 rows hold " + std::to_string(fp16.size()) + " values, [" +
                std::to_string(tokens) + ", " + std::to_string(channels) + "] needed");
  slot.assign(static_cast<size_t>(tokens), -1);
  rows.clear();
  int32_t next = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    if (kept.empty() || !kept[static_cast<size_t>(t)]) continue;
    for (int64_t c = 0; c < channels; ++c) {
      const float v = half_to_float(fp16[static_cast<size_t>(t * channels + c)]);
      if (!std::isfinite(v))
        throw Error(what + ": fp16 row of token " + std::to_string(t) + " is not finite");
      rows.push_back(v);
    }
    slot[static_cast<size_t>(t)] = next++;
  }
}

std::vector<float> CudaBackend::attention_decode(std::span<const float> q, int64_t q_heads,
                                                 const DecodeCache& cache) const {
  const KvShape& s = cache.shape;
  if (s.tokens < 0 || s.heads < 1 || s.head_dim < 1)
    throw Error("decode cache: shape [tokens " + std::to_string(s.tokens) + ", heads " +
                std::to_string(s.heads) + ", head_dim " + std::to_string(s.head_dim) +
                "] needs tokens >= 0 and positive heads and head_dim");
  shape_numel({s.tokens, s.heads, s.head_dim}, "decode cache");
  if (q_heads < 1 || q_heads % s.heads != 0)
    throw Error("attention_decode: q_heads (" + std::to_string(q_heads) +
                ") must be a positive multiple of the KV heads (" + std::to_string(s.heads) +
                ")");
  if (static_cast<int64_t>(q.size()) != q_heads * s.head_dim)
    throw Error("attention_decode: q has " + std::to_string(q.size()) + " values, [" +
                std::to_string(q_heads) + ", " + std::to_string(s.head_dim) + "] needed");
  require_finite(q, "attention_decode q");
  if (s.tokens < 1) throw Error("attention_decode: the cache holds no tokens");
  if (s.head_dim > 1024)
    throw Error("attention_decode: head_dim " + std::to_string(s.head_dim) +
                " exceeds the CUDA kernels' 1024");
  const int64_t tokens = s.tokens, channels = s.channels();
  const int d = static_cast<int>(s.head_dim);
  DeviceBuffer<float> dq(q), out(q.size());
  DeviceBuffer<uint8_t> scratch(static_cast<size_t>(
      cuda::decode_scratch_bytes(1, static_cast<int>(q_heads), d, tokens)));

  cuda::PackedDecode p;
  bool packed = packed_form(cache);
  const bool k_hadamard = cache.k_rotation == KeyRotation::PerHeadHadamard;
  if (packed) {
    const GroupLayout l = group_layout(tokens, channels, cache.k.params);
    p.batch = 1;
    p.tokens = tokens;
    p.heads = static_cast<int>(s.heads);
    p.head_dim = d;
    p.q_heads = static_cast<int>(q_heads);
    p.layout = device_layout(l, cache.k.params);
    p.k_hadamard = k_hadamard;
    p.v_hadamard = cache.v_per_head_hadamard;
    packed = cuda::packed_decode_supported(p) &&
             (!(k_hadamard || cache.v_per_head_hadamard) || is_pow2_size(d));
    if (packed) {
      check_quantized(cache.k, l, "decode cache K");
      check_quantized(cache.v, group_layout(tokens, channels, cache.v.params),
                            "decode cache V");
    }
  }
  if (!packed) {
    const std::vector<float> k = reconstruct_keys(cache);
    const std::vector<float> v = reconstruct_values(cache);
    DeviceBuffer<float> dk(k), dv(v);
    cuda::attention_decode_dense(dk.get(), dv.get(), tokens, static_cast<int>(s.heads), d,
                                 static_cast<int>(q_heads), dq.get(), out.get(), scratch.get(),
                                 nullptr);
    cuda::check(cudaDeviceSynchronize(), "attention_decode");
    return out.download();
  }
  std::vector<int32_t> k_slot, v_slot;
  std::vector<float> k_rows, v_rows;
  kept_rows(cache.kept, cache.k_fp16, tokens, channels, "decode cache K", k_slot, k_rows);
  kept_rows(cache.v_kept.empty() ? cache.kept : cache.v_kept, cache.v_fp16, tokens, channels,
            "decode cache V", v_slot, v_rows);
  const auto kept_k = static_cast<int64_t>(k_rows.size()) / channels;
  const auto kept_v = static_cast<int64_t>(v_rows.size()) / channels;
  // Both kept arrays share one row stride: pad the shorter to the longer.
  const int64_t kept_stride = std::max<int64_t>(std::max(kept_k, kept_v), 1);
  k_rows.resize(static_cast<size_t>(kept_stride * channels), 0.0f);
  v_rows.resize(static_cast<size_t>(kept_stride * channels), 0.0f);
  DeviceBuffer<float> dk_rows(k_rows), dv_rows(v_rows);
  // Kept rows are in the original basis; the kernel works in the stored (rotated) one.
  if (k_hadamard)
    cuda::fwht(dk_rows.get(), static_cast<int64_t>(k_rows.size()), d, fwht_scale(d), nullptr);
  if (cache.v_per_head_hadamard)
    cuda::fwht(dv_rows.get(), static_cast<int64_t>(v_rows.size()), d, fwht_scale(d), nullptr);
  DeviceBuffer<uint8_t> kc(std::span<const uint8_t>(cache.k.codes));
  DeviceBuffer<uint8_t> vc(std::span<const uint8_t>(cache.v.codes));
  DeviceBuffer<uint16_t> ks(std::span<const uint16_t>(cache.k.scale));
  DeviceBuffer<uint16_t> kz(std::span<const uint16_t>(cache.k.zero));
  DeviceBuffer<uint16_t> vs(std::span<const uint16_t>(cache.v.scale));
  DeviceBuffer<uint16_t> vz(std::span<const uint16_t>(cache.v.zero));
  DeviceBuffer<int32_t> dks(k_slot), dvs(v_slot);
  p.k_codes = kc.get();
  p.v_codes = vc.get();
  p.k_scale = ks.get();
  p.k_zero = kz.get();
  p.v_scale = vs.get();
  p.v_zero = vz.get();
  p.k_slot = dks.get();
  p.v_slot = dvs.get();
  p.k_kept = dk_rows.get();
  p.v_kept = dv_rows.get();
  p.kept_stride = kept_stride;
  cuda::attention_decode_packed(p, dq.get(), out.get(), scratch.get(), nullptr);
  cuda::check(cudaDeviceSynchronize(), "attention_decode");
  return out.download();
}

std::unique_ptr<Backend> make_cuda_backend() { return std::make_unique<CudaBackend>(); }

}  // namespace

std::string cuda_device_name() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count < 1) {
    cudaGetLastError();  // clear the sticky-free error state of a failed query
    return "";
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return "";
  return prop.name;
}

BackendEntry cuda_backend_entry() {
  BackendEntry e;
  e.name = "cuda";
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count < 1) {
    cudaGetLastError();
    e.detail = std::string("no CUDA device (") +
               (status != cudaSuccess ? cudaGetErrorString(status) : "device count 0") + ")";
    return e;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    e.detail = "no CUDA device (cudaGetDeviceProperties failed)";
    return e;
  }
  e.available = true;
  e.detail = std::string(prop.name) + ", " + std::to_string(prop.multiProcessorCount) +
             " SMs, compute capability " + std::to_string(prop.major) + "." +
             std::to_string(prop.minor);
  e.make = &make_cuda_backend;
  return e;
}

}  // namespace kvq
