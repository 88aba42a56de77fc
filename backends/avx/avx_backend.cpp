// The AVX-512 and AVX2 backends: validation, allocation and error messages (as the reference
// words them), around the kernel table of one ISA (backends/avx/kernels.h). Compiled without ISA
// flags; a kernel table is only touched after CPUID said the CPU can run it.
#include "backends/avx/avx_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

#include "backends/avx/expert_statistics.h"
#include "reference/error.h"
#include "reference/fwht.h"
#include "reference/half.h"
#include "reference/tensor.h"

namespace kvq {

namespace {

constexpr int64_t kMaxFwhtSize = 32768;  // SPEC.md §1

bool is_fwht_size(int64_t n) {
  return n >= 2 && n <= kMaxFwhtSize && (n & (n - 1)) == 0;
}

// ---- CPU features and the KVQ_MAX_ISA cap -------------------------------------------------

struct IsaStatus {
  bool cpu = false;      // the CPU (and OS) support every feature
  std::string features;  // what was found, or what is missing
};

IsaStatus probe(const char* const* names, bool (*const* tests)(), int count) {
  IsaStatus s;
  std::string found, missing;
  for (int i = 0; i < count; ++i) (tests[i]() ? found : missing) += std::string(" ") + names[i];
  s.cpu = missing.empty();
  s.features = s.cpu ? "found:" + found : "missing:" + missing;
  return s;
}

const IsaStatus& avx512_status() {
  static const IsaStatus status = [] {
    __builtin_cpu_init();
    static const char* const names[] = {"avx512f",  "avx512bw", "avx512dq",
                                        "avx512vl", "fma",      "f16c"};
    static bool (*const tests[])() = {[] { return __builtin_cpu_supports("avx512f") != 0; },
                                      [] { return __builtin_cpu_supports("avx512bw") != 0; },
                                      [] { return __builtin_cpu_supports("avx512dq") != 0; },
                                      [] { return __builtin_cpu_supports("avx512vl") != 0; },
                                      [] { return __builtin_cpu_supports("fma") != 0; },
                                      [] { return __builtin_cpu_supports("f16c") != 0; }};
    return probe(names, tests, 6);
  }();
  return status;
}

const IsaStatus& avx2_status() {
  static const IsaStatus status = [] {
    __builtin_cpu_init();
    static const char* const names[] = {"avx2", "fma", "f16c"};
    static bool (*const tests[])() = {[] { return __builtin_cpu_supports("avx2") != 0; },
                                      [] { return __builtin_cpu_supports("fma") != 0; },
                                      [] { return __builtin_cpu_supports("f16c") != 0; }};
    return probe(names, tests, 3);
  }();
  return status;
}

// KVQ_MAX_ISA: unset or "avx512" = no cap; "avx2" caps avx512; "scalar" caps both.
// Returns the level allowed (2 = avx512, 1 = avx2, 0 = none) and an error for other values.
int isa_cap(std::string& why) {
  const char* env = std::getenv("KVQ_MAX_ISA");
  if (!env || !*env) return 2;
  const std::string v = env;
  why = "capped by KVQ_MAX_ISA=" + v;
  if (v == "avx512") return 2;
  if (v == "avx2") return 1;
  if (v == "scalar" || v == "ref" || v == "none") return 0;
  why = "KVQ_MAX_ISA=" + v + " is not one of avx512, avx2, scalar";
  return 0;
}

// ---- validation shared by the ops (the reference's checks and wording) -----------------------

void check_permutation(std::span<const int32_t> perm, int64_t channels, const std::string& what) {
  if (static_cast<int64_t>(perm.size()) != channels)
    throw Error(what + ": permutation has " + std::to_string(perm.size()) +
                " entries, expected one per channel (" + std::to_string(channels) + ")");
  std::vector<uint8_t> seen(perm.size(), 0);
  for (size_t j = 0; j < perm.size(); ++j) {
    const int32_t p = perm[j];
    if (p < 0 || static_cast<int64_t>(p) >= channels)
      throw Error(what + ": permutation entry " + std::to_string(j) + " = " + std::to_string(p) +
                  " is outside [0, " + std::to_string(channels) + ")");
    if (seen[static_cast<size_t>(p)])
      throw Error(what + ": permutation entry " + std::to_string(j) + " repeats channel " +
                  std::to_string(p));
    seen[static_cast<size_t>(p)] = 1;
  }
}

void check_kv_size(size_t size, const KvShape& shape, const std::string& what) {
  if (shape.heads < 1 || shape.head_dim < 1)
    throw Error(what + ": heads (" + std::to_string(shape.heads) + ") and head_dim (" +
                std::to_string(shape.head_dim) + ") must be positive");
  const int64_t n = shape_numel({shape.tokens, shape.heads, shape.head_dim}, what);
  if (static_cast<int64_t>(size) != n)
    throw Error(what + ": input has " + std::to_string(size) + " values, shape [tokens " +
                std::to_string(shape.tokens) + ", heads " + std::to_string(shape.heads) +
                ", head_dim " + std::to_string(shape.head_dim) + "] needs " + std::to_string(n));
}

void throw_nonfinite(const std::string& what, float value, int64_t index) {
  throw Error(what + ": non-finite value " + std::to_string(value) + " at index " +
              std::to_string(index));
}

[[noreturn]] void throw_out_of_memory(const std::string& what, int64_t floats) {
  throw Error(what + ": could not allocate a per-thread scratch buffer of " +
              std::to_string(floats) + " floats");
}

avx::QuantSpec quant_spec(const GroupLayout& l, const QuantParams& p) {
  avx::QuantSpec s;
  s.bits = p.bits;
  s.channel_axis = p.axis == Axis::Channel;
  s.int_zero = p.zero_point == ZeroPoint::Int;
  s.clip = p.clip;
  s.rows = l.rows;
  s.cols = l.cols;
  s.group = l.group;
  s.groups_per_line = l.groups_per_line;
  s.full_bytes = (l.group * p.bits + 7) / 8;
  s.line_bytes = (!s.channel_axis && l.rows > 0) ? l.total_bytes() / l.rows : 0;
  return s;
}

Quantized allocate(int64_t rows, int64_t cols, const QuantParams& params, const GroupLayout& l) {
  Quantized q;
  q.rows = rows;
  q.cols = cols;
  q.params = params;
  q.codes.assign(static_cast<size_t>(l.total_bytes()), 0);
  q.scale.assign(static_cast<size_t>(l.group_count), 0);
  if (params.zero_point == ZeroPoint::Float)
    q.zero.assign(static_cast<size_t>(l.group_count), 0);
  else
    q.zero_int.assign(static_cast<size_t>(l.group_count), 0);
  return q;
}

avx::QuantOut outputs(Quantized& q) {
  avx::QuantOut o;
  o.codes = q.codes.data();
  o.scale = q.scale.data();
  o.zero = q.zero.empty() ? nullptr : q.zero.data();
  o.zero_int = q.zero_int.empty() ? nullptr : q.zero_int.data();
  return o;
}

// The reference's overflow message for group i (reference/quantize.cpp), recomputed from x.
[[noreturn]] void throw_overflow(const GroupLayout& l, const QuantParams& p, const float* x,
                                 int64_t i, const std::string& what) {
  const int64_t first = l.first_element(i);
  const int64_t n = l.group_size(i);
  const int64_t stride = l.element_stride();
  float lo = x[first], hi = x[first];
  for (int64_t k = 1; k < n; ++k) {
    lo = std::min(lo, x[first + k * stride]);
    hi = std::max(hi, x[first + k * stride]);
  }
  lo *= p.clip;
  hi *= p.clip;
  const float range = (hi - lo) / static_cast<float>((1 << p.bits) - 1);
  const bool scale_bad = (float_to_half(range) & 0x7C00u) == 0x7C00u;
  throw Error(what + ": group " + std::to_string(i) + " (row " + std::to_string(first / l.cols) +
              ", col " + std::to_string(first % l.cols) + ", " + std::to_string(n) +
              " elements): " +
              (scale_bad ? "scale (hi - lo) / (2^b - 1) = " + std::to_string(range)
                         : "zero lo = " + std::to_string(lo)) +
              " overflows fp16");
}

class AvxBackend final : public Backend {
 public:
  AvxBackend(std::string name, const avx::Kernels& k) : name_(std::move(name)), k_(k) {}

  std::string name() const override { return name_; }
  bool supports(Op op) const override { return op != Op::AttentionDecode; }

  void fwht(std::span<float> x, int n) const override {
    const float s = fwht_scale(n);  // validates n (SPEC.md §1)
    if (x.size() % static_cast<size_t>(n) != 0)
      throw Error("fwht: input has " + std::to_string(x.size()) +
                  " values, not a multiple of the transform size n = " + std::to_string(n));
    k_.fwht(x.data(), static_cast<int64_t>(x.size() / static_cast<size_t>(n)), n, s);
  }

  std::vector<float> reorder(std::span<const float> x, int64_t rows,
                             std::span<const int32_t> perm) const override {
    const auto channels = static_cast<int64_t>(perm.size());
    if (rows < 0) throw Error("reorder: negative row count " + std::to_string(rows));
    const int64_t n = shape_numel({rows, channels}, "reorder");
    if (static_cast<int64_t>(x.size()) != n)
      throw Error("reorder: input has " + std::to_string(x.size()) + " values, " +
                  std::to_string(rows) + " rows of " + std::to_string(channels) +
                  " channels need " + std::to_string(n));
    check_permutation(perm, channels, "reorder");
    std::vector<float> out(x.size());
    k_.reorder(x.data(), rows, channels, perm.data(), out.data());
    return out;
  }

  std::vector<float> rotate_k(std::span<const float> k_pre_rope, const KvShape& shape,
                              const RotationParams& params) const override {
    check_rotation_shape(shape, params.head_group);
    check_kv_size(k_pre_rope.size(), shape, "rotate_k");
    require_finite(k_pre_rope, "rotate_k input");
    if (!params.perm.empty()) check_permutation(params.perm, shape.channels(), "rotate_k");
    const int n = static_cast<int>(params.head_group * shape.head_dim);
    avx::RowRotation rot{n, fwht_scale(n), params.perm.empty() ? nullptr : params.perm.data()};
    std::vector<float> out(k_pre_rope.size());
    if (!k_.rotate(k_pre_rope.data(), shape.tokens, shape.channels(), rot, out.data()))
      throw_out_of_memory("rotate_k", shape.channels());
    return out;
  }

  std::vector<float> rotate_v(std::span<const float> v, const KvShape& shape) const override {
    check_kv_size(v.size(), shape, "rotate_v");
    if (!is_fwht_size(shape.head_dim))
      throw Error("rotate_v: head_dim d = " + std::to_string(shape.head_dim) +
                  " is not a power of two in [2, 32768]");
    require_finite(v, "rotate_v input");
    const int n = static_cast<int>(shape.head_dim);
    avx::RowRotation rot{n, fwht_scale(n), nullptr};
    std::vector<float> out(v.size());
    if (!k_.rotate(v.data(), shape.tokens, shape.channels(), rot, out.data()))
      throw_out_of_memory("rotate_v", shape.channels());
    return out;
  }

  Quantized quantize(std::span<const float> x, int64_t rows, int64_t cols,
                     const QuantParams& params) const override {
    const std::string what = "x";
    const GroupLayout l = group_layout(rows, cols, params);  // validates params and shape
    if (static_cast<int64_t>(x.size()) != rows * cols)
      throw Error(what + ": input has " + std::to_string(x.size()) + " values, shape [" +
                  std::to_string(rows) + ", " + std::to_string(cols) + "] needs " +
                  std::to_string(rows * cols));
    Quantized q = allocate(rows, cols, params, l);
    const avx::Faults f = k_.quantize(x.data(), quant_spec(l, params), outputs(q));
    if (f.bad_input >= 0) throw_nonfinite(what, x[static_cast<size_t>(f.bad_input)], f.bad_input);
    if (f.bad_group >= 0) throw_overflow(l, params, x.data(), f.bad_group, what);
    return q;
  }

  std::vector<float> dequantize(const Quantized& q) const override {
    const GroupLayout l = group_layout(q.rows, q.cols, q.params);
    const std::string what = "dequantize";
    if (static_cast<int64_t>(q.codes.size()) != l.total_bytes())
      throw Error(what + ": codes hold " + std::to_string(q.codes.size()) +
                  " bytes, layout needs " + std::to_string(l.total_bytes()));
    if (static_cast<int64_t>(q.scale.size()) != l.group_count)
      throw Error(what + ": " + std::to_string(q.scale.size()) + " scales for " +
                  std::to_string(l.group_count) + " groups");
    const bool is_float = q.params.zero_point == ZeroPoint::Float;
    const size_t zeros = is_float ? q.zero.size() : q.zero_int.size();
    if (static_cast<int64_t>(zeros) != l.group_count)
      throw Error(what + ": " + std::to_string(zeros) + (is_float ? " zeros" : " integer zeros") +
                  " for " + std::to_string(l.group_count) + " groups");
    for (int64_t i = 0; i < l.group_count; ++i) {
      const bool bad =
          (q.scale[i] & 0x7C00u) == 0x7C00u || (is_float && (q.zero[i] & 0x7C00u) == 0x7C00u);
      if (bad) {
        const int64_t first = l.first_element(i);
        throw Error(what + ": group " + std::to_string(i) + " (row " +
                    std::to_string(first / l.cols) + ", col " + std::to_string(first % l.cols) +
                    ", " + std::to_string(l.group_size(i)) +
                    " elements) has a non-finite scale or zero");
      }
    }
    std::vector<float> out(static_cast<size_t>(q.rows * q.cols));
    k_.dequantize(q.codes.data(), q.scale.data(), is_float ? q.zero.data() : nullptr,
                  is_float ? nullptr : q.zero_int.data(), quant_spec(l, q.params), out.data());
    return out;
  }

  Quantized rotate_quantize(const TensorView& kv, const KvShape& shape,
                            const RotateQuantizeParams& params) const override {
    const std::string what = "rotate_quantize input";
    if (kv.numel() != shape.tokens * shape.channels())
      throw Error("rotate_quantize: input has " + std::to_string(kv.numel()) +
                  " elements, shape [tokens, heads, head_dim] needs " +
                  std::to_string(shape.tokens * shape.channels()));
    avx::Src src;
    switch (kv.dtype) {
      case DType::F32: src = avx::Src::F32; break;
      case DType::F16: src = avx::Src::F16; break;
      case DType::BF16: src = avx::Src::BF16; break;
      default:
        throw Error(what + ": dtype " + std::string(dtype_name(kv.dtype)) +
                    " cannot be widened to F32");
    }
    avx::RowRotation rot;
    switch (params.rotation) {
      case AppendRotation::None: break;
      case AppendRotation::KeyGrouped: {
        check_rotation_shape(shape, params.rotation_params.head_group);
        const auto& perm = params.rotation_params.perm;
        if (!perm.empty()) check_permutation(perm, shape.channels(), "rotate_k");
        rot.n = static_cast<int>(params.rotation_params.head_group * shape.head_dim);
        rot.perm = perm.empty() ? nullptr : perm.data();
        break;
      }
      case AppendRotation::PerHead:
        if (shape.heads < 1 || !is_fwht_size(shape.head_dim))
          throw Error("rotate_v: head_dim d = " + std::to_string(shape.head_dim) +
                      " is not a power of two in [2, 32768]");
        rot.n = static_cast<int>(shape.head_dim);
        break;
    }
    if (rot.n > 0) rot.scale = fwht_scale(rot.n);
    const GroupLayout l = group_layout(shape.tokens, shape.channels(), params.quant);
    Quantized q = allocate(shape.tokens, shape.channels(), params.quant, l);
    const avx::Faults f =
        k_.rotate_quantize(kv.data, src, rot, quant_spec(l, params.quant), outputs(q));
    if (f.out_of_memory)
      throw_out_of_memory("rotate_quantize",
                          params.quant.axis == Axis::Channel ? l.group * l.cols : l.cols);
    if (f.bad_input >= 0 || f.bad_rotated >= 0 || f.bad_group >= 0) {
      // Errors are rare: recompute the rotated tensor to word them as the reference does.
      const std::vector<float> x = widen_f32(kv, what);
      if (f.bad_input >= 0) throw_nonfinite(what, x[static_cast<size_t>(f.bad_input)], f.bad_input);
      std::vector<float> r(x.size());
      if (!k_.rotate(x.data(), shape.tokens, shape.channels(), rot, r.data()))
        throw_out_of_memory("rotate_quantize", shape.channels());
      if (f.bad_rotated >= 0)
        throw_nonfinite(what, r[static_cast<size_t>(f.bad_rotated)], f.bad_rotated);
      throw_overflow(l, params.quant, r.data(), f.bad_group, what);
    }
    return q;
  }

  TokenAbsmax token_absmax(std::span<const float> hidden, int64_t tokens,
                           int64_t hidden_size) const override {
    const std::string what = "token_absmax hidden";
    if (tokens < 1 || hidden_size < 1)
      throw Error(what + ": tokens (" + std::to_string(tokens) + ") and hidden size (" +
                  std::to_string(hidden_size) + ") must be positive");
    const int64_t n = shape_numel({tokens, hidden_size}, what);
    if (static_cast<int64_t>(hidden.size()) != n)
      throw Error(what + ": has " + std::to_string(hidden.size()) + " values, [" +
                  std::to_string(tokens) + ", " + std::to_string(hidden_size) + "] needs " +
                  std::to_string(n));
    TokenAbsmax out;
    out.absmax.assign(static_cast<size_t>(tokens), 0.0f);
    out.argmax.assign(static_cast<size_t>(tokens), 0);
    const int64_t bad =
        k_.token_absmax(hidden.data(), tokens, hidden_size, out.absmax.data(), out.argmax.data());
    if (bad >= 0) throw_nonfinite(what, hidden[static_cast<size_t>(bad)], bad);
    return out;
  }

  std::vector<ExpertStat> expert_statistics(std::span<const int32_t> ids,
                                            std::span<const float> down_absmax,
                                            std::span<const int32_t> down_argmax, int64_t tokens,
                                            int64_t top_k, int64_t num_experts) const override {
    return avx::expert_statistics(ids, down_absmax, down_argmax, tokens, top_k, num_experts);
  }

  std::vector<float> attention_decode(std::span<const float>, int64_t,
                                      const DecodeCache&) const override {
    throw Error(name_ + ": attention_decode is not supported by this backend");
  }

 private:
  std::string name_;
  const avx::Kernels& k_;
};

std::unique_ptr<Backend> make_avx512() {
  return std::make_unique<AvxBackend>("avx512", avx::avx512_kernels());
}
std::unique_ptr<Backend> make_avx2() {
  return std::make_unique<AvxBackend>("avx2", avx::avx2_kernels());
}

}  // namespace

std::vector<BackendEntry> avx_backend_entries() {
  std::string why;
  const int cap = isa_cap(why);
  std::vector<BackendEntry> entries;
  const IsaStatus& s512 = avx512_status();
  const IsaStatus& s2 = avx2_status();
  const std::string d512 = "AVX-512 + OpenMP, " + s512.features;
  const std::string d2 = "AVX2 + OpenMP, " + s2.features;
  entries.push_back({"avx512", s512.cpu && cap >= 2, s512.cpu && cap < 2 ? d512 + "; " + why : d512,
                     &make_avx512});
  entries.push_back(
      {"avx2", s2.cpu && cap >= 1, s2.cpu && cap < 1 ? d2 + "; " + why : d2, &make_avx2});
  return entries;
}

const avx::Kernels* avx_kernels_for(const std::string& isa) {
  if (isa == "avx512") return avx512_status().cpu ? &avx::avx512_kernels() : nullptr;
  if (isa == "avx2") return avx2_status().cpu ? &avx::avx2_kernels() : nullptr;
  return nullptr;
}

}  // namespace kvq
