// The AVX-512 and AVX2 backends: validation, allocation and error messages (as the reference
// words them), around the kernel table of one ISA (backends/avx/kernels.h). Compiled without ISA
// flags; a kernel table is only touched after CPUID said the CPU can run it.
#include "backends/avx/avx_backend.h"

#include <cctype>
#include <cpuid.h>

#include <cstdlib>
#include <string>

#include "backends/avx/decode_cache.h"
#include "backends/avx/quant_spec.h"
#include "reference/error.h"
#include "reference/fwht.h"
#include "reference/quantize.h"
#include "reference/rotation.h"
#include "reference/sinks.h"
#include "reference/tensor.h"

namespace kvq {

namespace {

// ---- CPU features and the KVQ_MAX_ISA cap -------------------------------------------------

struct IsaStatus {
  bool cpu = false;      // the CPU (and OS) support every feature
  std::string features;  // what was found, or what is missing
};

// F16C from CPUID leaf 1, ECX bit 29 (Intel SDM vol. 2A, CPUID): clang 14's
// __builtin_cpu_supports does not accept "f16c", and <cpuid.h> exists in both compilers. The
// OS-support (XGETBV) half of the check is the avx2/avx512f test that F16C is always paired with.
bool cpu_has_f16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  return (ecx & bit_F16C) != 0;
}

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
                                      [] { return cpu_has_f16c(); }};
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
                                      [] { return cpu_has_f16c(); }};
    return probe(names, tests, 3);
  }();
  return status;
}

// KVQ_MAX_ISA: unset or "avx512" = no cap; "avx2" caps avx512; "scalar" caps both.
// Returns the level allowed (2 = avx512, 1 = avx2, 0 = none) and an error for other values.
int isa_cap(std::string& why) {
  const char* env = std::getenv("KVQ_MAX_ISA");
  if (!env || !*env) return 2;
  std::string v = env;
  for (char& c : v) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));  // AVX2
  why = "capped by KVQ_MAX_ISA=" + v;
  if (v == "avx512") return 2;
  if (v == "avx2") return 1;
  if (v == "scalar" || v == "ref" || v == "none") return 0;
  why = "KVQ_MAX_ISA=" + v + " is not one of avx512, avx2, scalar";
  return 0;
}

// ---- validation shared by the ops (the reference's checks and wording) -----------------------

void throw_nonfinite(const std::string& what, float value, int64_t index) {
  throw Error(what + ": non-finite value " + std::to_string(value) + " at index " +
              std::to_string(index));
}

[[noreturn]] void throw_out_of_memory(const std::string& what, int64_t floats) {
  throw Error(what + ": could not allocate a per-thread scratch buffer of " +
              std::to_string(floats) + " floats");
}

avx::QuantOut outputs(Quantized& q) {
  avx::QuantOut o;
  o.codes = q.codes.data();
  o.scale = q.scale.data();
  o.zero = q.zero.empty() ? nullptr : q.zero.data();
  o.zero_int = q.zero_int.empty() ? nullptr : q.zero_int.data();
  return o;
}

// A group's scale or zero overflowed fp16 in the kernel: the reference quantizer, run on the
// same input, throws its own message naming the group (errors are rare; one wording).
[[noreturn]] void throw_overflow(std::span<const float> x, int64_t rows, int64_t cols,
                                 const QuantParams& p, const std::string& what) {
  (void)kvq::quantize(x, rows, cols, p, what);
  throw Error(what + ": a group's scale or zero overflows fp16");
}

class AvxBackend final : public Backend {
 public:
  AvxBackend(std::string name, const avx::Kernels& k) : name_(std::move(name)), k_(k) {}

  std::string name() const override { return name_; }
  bool supports(Op) const override { return true; }

  void fwht(std::span<float> x, int n) const override {
    const float s = fwht_scale(n);  // validates n (docs/spec.md §1)
    if (x.size() % static_cast<size_t>(n) != 0)
      throw Error("fwht: input has " + std::to_string(x.size()) +
                  " values, not a multiple of the transform size n = " + std::to_string(n));
    k_.fwht(x.data(), static_cast<int64_t>(x.size() / static_cast<size_t>(n)), n, s);
  }

  std::vector<float> reorder(std::span<const float> x, int64_t rows,
                             std::span<const int32_t> perm) const override {
    check_reorder_input(x.size(), rows, perm, "reorder");
    const auto channels = static_cast<int64_t>(perm.size());
    std::vector<float> out(x.size());
    k_.reorder(x.data(), rows, channels, perm.data(), out.data());
    return out;
  }

  std::vector<float> rotate_k(std::span<const float> k_pre_rope, const KvShape& shape,
                              const RotationParams& params) const override {
    check_rotate_k_input(k_pre_rope, shape, params);
    const int n = static_cast<int>(params.head_group * shape.head_dim);
    avx::RowRotation rot{n, fwht_scale(n), params.perm.empty() ? nullptr : params.perm.data()};
    std::vector<float> out(k_pre_rope.size());
    if (!k_.rotate(k_pre_rope.data(), shape.tokens, shape.channels(), rot, out.data()))
      throw_out_of_memory("rotate_k", shape.channels());
    return out;
  }

  std::vector<float> rotate_v(std::span<const float> v, const KvShape& shape) const override {
    check_kv_size(v.size(), shape, "rotate_v");
    check_value_rotation(shape);
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
    Quantized q = make_quantized(rows, cols, params, l);
    const avx::Faults f = k_.quantize(x.data(), avx::quant_spec(l, params), outputs(q));
    if (f.bad_input >= 0) throw_nonfinite(what, x[static_cast<size_t>(f.bad_input)], f.bad_input);
    if (f.bad_group >= 0) throw_overflow(x, rows, cols, params, what);
    return q;
  }

  std::vector<float> dequantize(const Quantized& q) const override {
    const GroupLayout l = group_layout(q.rows, q.cols, q.params);
    check_quantized(q, l, "dequantize");
    const bool is_float = q.params.zero_point == ZeroPoint::Float;
    std::vector<float> out(static_cast<size_t>(q.rows * q.cols));
    k_.dequantize(q.codes.data(), q.scale.data(), is_float ? q.zero.data() : nullptr,
                  is_float ? nullptr : q.zero_int.data(), avx::quant_spec(l, q.params), out.data());
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
        check_kv_size(static_cast<size_t>(kv.numel()), shape, "rotate_v");
        check_value_rotation(shape);
        rot.n = static_cast<int>(shape.head_dim);
        break;
    }
    if (rot.n > 0) rot.scale = fwht_scale(rot.n);
    const GroupLayout l = group_layout(shape.tokens, shape.channels(), params.quant);
    Quantized q = make_quantized(shape.tokens, shape.channels(), params.quant, l);
    const avx::Faults f =
        k_.rotate_quantize(kv.data, src, rot, avx::quant_spec(l, params.quant), outputs(q));
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
      if (f.bad_rotated >= 0)  // the input is finite: an overflow inside the rotation
        require_no_overflow(r, params.rotation == AppendRotation::PerHead ? "rotate_v (FWHT)"
                                                                         : "rotate_k (FWHT)");
      throw_overflow(r, shape.tokens, shape.channels(), params.quant, what);
    }
    return q;
  }

  TokenAbsmax token_absmax(std::span<const float> hidden, int64_t tokens,
                           int64_t hidden_size) const override {
    const std::string what = "token_absmax hidden";
    check_hidden_shape(hidden.size(), tokens, hidden_size, what);
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
    // Not performance-relevant (tokens * top_k scalars): the reference is the implementation.
    return kvq::expert_statistics(ids, down_absmax, down_argmax, tokens, top_k, num_experts);
  }

  // docs/spec.md §7 (tolerance): backends/avx/attention_decode.h.
  std::vector<float> attention_decode(std::span<const float> q, int64_t q_heads,
                                      const DecodeCache& cache) const override {
    const avx::DecodeTables tables(q, q_heads, cache);  // the reference's rules and errors
    std::vector<float> out(static_cast<size_t>(q_heads * cache.shape.head_dim));
    if (!k_.attention_decode(tables.problem(), out.data()))
      throw_out_of_memory("attention_decode", 2 * avx::kDecodeChunk * cache.shape.channels());
    return out;
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
