#include "backends/reference_backend.h"

#include "reference/error.h"
#include "reference/fwht.h"

namespace kvq {

Quantized reference_rotate_quantize(const TensorView& kv, const KvShape& shape,
                                    const RotateQuantizeParams& params) {
  if (kv.numel() != shape.tokens * shape.channels())
    throw Error("rotate_quantize: input has " + std::to_string(kv.numel()) +
                " elements, shape [tokens, heads, head_dim] needs " +
                std::to_string(shape.tokens * shape.channels()));
  const std::vector<float> x = widen_f32(kv, "rotate_quantize input");
  require_finite(x, "rotate_quantize input");
  std::vector<float> rotated;
  switch (params.rotation) {
    case AppendRotation::None: rotated = x; break;
    case AppendRotation::KeyGrouped: rotated = rotate_k(x, shape, params.rotation_params); break;
    case AppendRotation::PerHead: rotated = rotate_v(x, shape); break;
  }
  return quantize(rotated, shape.tokens, shape.channels(), params.quant, "rotate_quantize input");
}

namespace {

class ReferenceBackend final : public Backend {
 public:
  std::string name() const override { return "ref"; }
  bool supports(Op) const override { return true; }

  void fwht(std::span<float> x, int n) const override { kvq::fwht(x, n); }
  std::vector<float> reorder(std::span<const float> x, int64_t rows,
                             std::span<const int32_t> perm) const override {
    return kvq::reorder(x, rows, perm);
  }
  std::vector<float> rotate_k(std::span<const float> k_pre_rope, const KvShape& shape,
                              const RotationParams& params) const override {
    return kvq::rotate_k(k_pre_rope, shape, params);
  }
  std::vector<float> rotate_v(std::span<const float> v, const KvShape& shape) const override {
    return kvq::rotate_v(v, shape);
  }
  Quantized quantize(std::span<const float> x, int64_t rows, int64_t cols,
                     const QuantParams& params) const override {
    return kvq::quantize(x, rows, cols, params);
  }
  std::vector<float> dequantize(const Quantized& q) const override { return kvq::dequantize(q); }
  Quantized rotate_quantize(const TensorView& kv, const KvShape& shape,
                            const RotateQuantizeParams& params) const override {
    return reference_rotate_quantize(kv, shape, params);
  }
  TokenAbsmax token_absmax(std::span<const float> hidden, int64_t tokens,
                           int64_t hidden_size) const override {
    return kvq::token_absmax(hidden, tokens, hidden_size);
  }
  std::vector<ExpertStat> expert_statistics(std::span<const int32_t> ids,
                                            std::span<const float> down_absmax,
                                            std::span<const int32_t> down_argmax, int64_t tokens,
                                            int64_t top_k, int64_t num_experts) const override {
    return kvq::expert_statistics(ids, down_absmax, down_argmax, tokens, top_k, num_experts);
  }
  std::vector<float> attention_decode(std::span<const float> q, int64_t q_heads,
                                      const DecodeCache& cache) const override {
    return kvq::attention_decode(q, q_heads, cache);
  }
};

}  // namespace

std::unique_ptr<Backend> make_reference_backend() { return std::make_unique<ReferenceBackend>(); }

}  // namespace kvq
