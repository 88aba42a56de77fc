// The one interface every backend implements (docs/design.md "Backend interface"). Inputs are plain
// fp32 spans (recordings are widened exactly on load) except the fused append path, which reads
// fp16 or fp32 K/V as an inference engine holds them. A backend that lacks an op says so through
// supports(); it never falls back to another backend silently.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "reference/attention.h"
#include "reference/experts.h"
#include "reference/quantize.h"
#include "reference/rotation.h"
#include "reference/sinks.h"
#include "reference/tensor.h"

namespace kvq {

enum class Op {
  Fwht,
  Reorder,
  RotateK,
  RotateV,
  Quantize,
  Dequantize,
  RotateQuantize,
  TokenAbsmax,
  ExpertStatistics,
  AttentionDecode,
};
const char* op_name(Op op);  // "fwht", "reorder", "rotate_k", ... (scenario spelling)

// The fused append path: rotation of one layer's new K or V rows, then quantize + pack.
enum class AppendRotation : uint8_t {
  None,             // quantize as is
  KeyGrouped,       // rotate_k: grouped FWHT (head_group) + reorder (perm)
  PerHead,          // fwht(., head_dim) per head (values; AKVQ-VL keys)
};
struct RotateQuantizeParams {
  AppendRotation rotation = AppendRotation::KeyGrouped;
  RotationParams rotation_params;
  QuantParams quant;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual bool supports(Op op) const = 0;

  // Each op throws kvq::Error when it is not supported or its input is invalid.
  virtual void fwht(std::span<float> x, int n) const = 0;
  virtual std::vector<float> reorder(std::span<const float> x, int64_t rows,
                                     std::span<const int32_t> perm) const = 0;
  virtual std::vector<float> rotate_k(std::span<const float> k_pre_rope, const KvShape& shape,
                                      const RotationParams& params) const = 0;
  virtual std::vector<float> rotate_v(std::span<const float> v, const KvShape& shape) const = 0;
  virtual Quantized quantize(std::span<const float> x, int64_t rows, int64_t cols,
                             const QuantParams& params) const = 0;
  virtual std::vector<float> dequantize(const Quantized& q) const = 0;
  // kv: [tokens, heads, head_dim] as F32 or F16. Equal, bit for bit, to
  // quantize(rotate(widen(kv))) of the reference.
  virtual Quantized rotate_quantize(const TensorView& kv, const KvShape& shape,
                                    const RotateQuantizeParams& params) const = 0;
  virtual TokenAbsmax token_absmax(std::span<const float> hidden, int64_t tokens,
                                   int64_t hidden_size) const = 0;
  virtual std::vector<ExpertStat> expert_statistics(std::span<const int32_t> ids,
                                                    std::span<const float> down_absmax,
                                                    std::span<const int32_t> down_argmax,
                                                    int64_t tokens, int64_t top_k,
                                                    int64_t num_experts) const = 0;
  virtual std::vector<float> attention_decode(std::span<const float> q, int64_t q_heads,
                                              const DecodeCache& cache) const = 0;
};

// A backend this process can run, or the reason it cannot (no AVX-512, no GPU, not built).
struct BackendEntry {
  std::string name;
  bool available = false;
  std::string detail;  // features found, or why not available
  std::unique_ptr<Backend> (*make)() = nullptr;
};

// Every backend compiled in, in preference order: ref first.
const std::vector<BackendEntry>& backend_registry();
// The named available backend; throws kvq::Error listing the available ones otherwise.
std::unique_ptr<Backend> make_backend(const std::string& name);

}  // namespace kvq
