// llama2.c checkpoint (version 0) loader and forward (docs/design.md "Models and data"; format in
// docs/design.md): RMSNorm (eps 1e-5), RoPE theta 10000 on pairs (2i, 2i+1),
// grouped-query attention, SwiGLU FFN, final RMSNorm, tied or untied classifier. RoPE is
// kvq::apply_rope (docs/spec.md §7), the rotation the methods apply to dequantized pre-RoPE keys.
// Token-by-token decode goes through a KvCache (harness/model/kv_cache.h), so the cache can hold
// fp32 rows or what a quantization method reconstructs (docs/spec.md §9), and exposes each layer's
// activations to a hook for recording (docs/design.md recording schema).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "harness/model/kv_cache.h"

namespace kvq {

class Tokenizer;

struct ModelConfig {
  int32_t dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab_size = 0,
          seq_len = 0;
  bool shared_classifier = true;  // header vocab_size > 0
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  int32_t head_dim() const { return dim / n_heads; }
  int32_t kv_dim() const { return head_dim() * n_kv_heads; }
};

// Weights of one layer, row-major [out, in] matrices, pointing into the Model.
struct LayerWeights {
  const float *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3;
};

class Model {
 public:
  // Throws kvq::Error naming the file on a short header, zero/negative dimensions, dim not a
  // multiple of n_heads, n_heads not a multiple of n_kv_heads, odd head_dim, a file size other
  // than the config implies (expected vs actual bytes) or a non-finite weight (tensor, index).
  static Model load(const std::string& path);

  const ModelConfig& config() const { return config_; }
  const std::string& path() const { return path_; }
  std::string name() const;  // file stem, e.g. "stories260K"

  const float* token_embedding() const { return data_.data() + embedding_; }
  LayerWeights layer(int l) const;
  const float* rms_final() const { return data_.data() + rms_final_; }
  const float* classifier() const { return data_.data() + classifier_; }

 private:
  std::string path_;
  ModelConfig config_;
  std::vector<float> data_;  // every weight, in file order
  size_t embedding_ = 0, rms_final_ = 0, classifier_ = 0;
  std::vector<size_t> layer_offsets_;  // 9 offsets per layer, LayerWeights order
};

// Throws kvq::Error naming both files unless the tokenizer's vocabulary matches the model's.
void require_matching_tokenizer(const Model& model, const Tokenizer& tokenizer);

// Per-layer activations of one token, for recording (docs/design.md recording schema).
struct LayerActivations {
  int layer = 0;
  int64_t position = 0;
  std::span<const float> hidden_in;   // [dim] residual stream entering the layer
  std::span<const float> q;           // [n_heads * head_dim] post-RoPE
  std::span<const float> k_pre_rope;  // [n_kv_heads * head_dim]
  std::span<const float> k;           // post-RoPE
  std::span<const float> v;
};
using ActivationHook = std::function<void(const LayerActivations&)>;

// Token-by-token decode of one sequence from an empty cache. Not thread-safe; one per thread.
class Decoder {
 public:
  Decoder(const Model& model, KvCache& cache);
  void set_hook(ActivationHook hook) { hook_ = std::move(hook); }
  // Feeds `token` at the next position and returns the logits of the following token [vocab],
  // valid until the next step. Throws kvq::Error on a token id out of range or a position past
  // the model's seq_len.
  std::span<const float> step(int32_t token);
  int64_t position() const { return position_; }

 private:
  const Model& model_;
  KvCache& cache_;
  ActivationHook hook_;
  int64_t position_ = 0;
  std::vector<float> x_, xb_, xb2_, hb_, hb2_, q_, k_pre_, k_, v_, att_, logits_;
};

// The whole-sequence (prefill) forward over `tokens` at positions 0..T-1 with full-precision
// causal attention: logits [T, vocab], row t predicting token t + 1.
std::vector<float> forward_sequence(const Model& model, std::span<const int32_t> tokens);

// Greedy decoding from BOS: `steps` argmax tokens (ties: lowest id), stopping early after BOS.
std::vector<int32_t> generate_greedy(const Model& model, int steps);

}  // namespace kvq
