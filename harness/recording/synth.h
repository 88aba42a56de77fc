// Synthetic recordings with planted ground truth (docs/design.md "Models and data"): K with outlier
// channels, massive activations at token 0 and at a non-initial delimiter token, attention sinks
// at exactly those tokens, MoE layers with a few Super Experts, an image-token block.
// Deterministic from the seed on every platform (own PRNG, fp64 Box-Muller).
//
// Tensors (docs/design.md "Recording"), all F32 unless noted, per layer i:
//   layers.{i}.k_pre_rope [T, Hkv, d], layers.{i}.k (RoPE at the token's position, docs/spec.md §7
//   apply_rope), layers.{i}.v [T, Hkv, d], layers.{i}.q [T, H, d] (post-RoPE, like k),
//   layers.{i}.hidden_in [T, D]; when experts > 0: layers.{i}.experts.ids [T, k] I32,
//   .down_absmax [T, k] F32, .down_argmax [T, k] I32; and modality [T] U8 (1 = image).
// Metadata (strings; lists as JSON): model "synthetic", generator, seed, num_hidden_layers,
//   num_tokens, num_attention_heads, num_key_value_heads, head_dim, hidden_size, num_experts,
//   num_experts_per_tok, image_tokens, rope_theta, vocab_size, token_ids; ground truth:
//   sink_tokens, massive_tokens, massive_channels, massive_layer, super_experts
//   ([[layer, expert], ...]), outlier_channels (flat channel indices h * d + c of pre-RoPE K,
//   the same in every layer); pruned_experts ([[layer, expert], ...], only when some are).
//
// Causal chain (Super Experts, docs/spec.md §5 study): the massive activations of hidden_in at
// layer l >= 1 are the residual-stream sum of the down_proj outputs of the Super Experts of layers
// < l at the tokens they process (the sink tokens), each Super Expert's share proportional to
// its planted peak; the sink tokens' keys on the sink pair (and their small values) scale with
// the fraction of that massive activation present at the layer, and queries stay aligned with
// the sink key, so the attention sinks follow from the massive activations. Zeroing experts
// (SynthParams::pruned_experts) removes their share; with nothing pruned every share is present
// and the output is exactly that of the plain generator. Without Super Experts (experts = 0)
// the massive activations are planted uncaused.
//
// Text-salient early layers (text_attention > 0): text keys carry a marker on RoPE pair d/2 - 2,
// image keys do not, and queries of layers l < L / 2 align with it, so text draws e^text_attention
// times an image token's attention there (RoPE turns that pair by < 0.3 rad over 256 tokens at
// d >= 16); later layers keep the sinks as the few pivots (pivot-salient attention).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "reference/tensor.h"

namespace kvq {

struct SynthParams {
  uint64_t seed = 1;
  int64_t layers = 4;    // >= 3: docs/spec.md §4's sink ground truth reads layers >= 2
  int64_t tokens = 256;  // >= 80 and >= 8 + image_tokens
  int64_t heads = 8;     // query heads, a multiple of kv_heads
  int64_t kv_heads = 4;
  int64_t head_dim = 32;  // even, >= 4
  int64_t hidden = 256;
  int64_t experts = 128;  // 0: dense model, no expert tensors
  int64_t top_k = 4;
  int64_t image_tokens = 64;  // a block of image tokens starting at position 8
  // AKVQ-VL's text-salient attention (docs/spec.md §6): in layers l < L / 2, every query gives each
  // text token this many nats more logit than an image token (a key marker on the second-lowest
  // RoPE pair, queries aligned with it). 0 (the default) leaves every value as without it.
  double text_attention = 0.0;
  float rope_theta = 10000.0f;
  // (layer, expert) pairs whose output is zeroed (pruning study, docs/spec.md §5): their down_proj
  // max-abs becomes 0 (argmax channel 0) and, for Super Experts, their share of the massive
  // activations and sink keys of later layers disappears. Every random draw is the same as
  // without pruning (seed for seed), so only what the pruned experts cause changes.
  std::vector<std::pair<int64_t, int64_t>> pruned_experts;
};

struct SynthGroundTruth {
  std::vector<int64_t> sink_tokens;  // = massive_tokens
  std::vector<int64_t> massive_tokens;
  std::vector<int64_t> massive_channels;
  int64_t massive_layer = 1;                               // first layer whose hidden_in holds them
  std::vector<std::pair<int64_t, int64_t>> super_experts;  // (layer, expert), by m descending
  std::vector<int64_t> outlier_channels;                   // flat h * d + c, ascending
};

struct SynthRecording {
  std::vector<std::pair<std::string, Tensor>> tensors;  // in file order
  std::map<std::string, std::string> metadata;
  SynthGroundTruth truth;
};

// Throws kvq::Error naming the parameter when a value is out of range.
SynthRecording synthesize(const SynthParams& params);
void write_recording(const std::string& path, const SynthRecording& recording);

// How many Super Experts docs/spec.md §5's strict "> P99.5" can select among n considered values
// (n - 1 - floor(0.995 (n - 1))); the generator plants min(3, this) of them.
int64_t selectable_super_experts(int64_t considered_values);

}  // namespace kvq
