#include "harness/model/llama2.h"

#include <Eigen/Core>
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "harness/model/tokenizer.h"
#include "reference/attention.h"
#include "reference/error.h"

namespace kvq {
namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMatrixMap = Eigen::Map<const RowMatrix>;
using ConstVectorMap = Eigen::Map<const Eigen::VectorXf>;
using VectorMap = Eigen::Map<Eigen::VectorXf>;

constexpr int kHeaderInts = 7;
// Multiply-adds of one decode step's attention above which its heads run on several threads.
constexpr int64_t kParallelAttentionWork = int64_t{1} << 18;
constexpr int kLayerTensors = 9;
const char* const kLayerTensorNames[kLayerTensors] = {"rms_att", "wq", "wk", "wv", "wo",
                                                      "rms_ffn", "w1", "w2", "w3"};

// a * b for element counts, or an error naming the file: a hostile header cannot overflow.
int64_t checked_mul(int64_t a, int64_t b, const std::string& path) {
  if (a != 0 && b > std::numeric_limits<int64_t>::max() / 4 / a)
    throw Error("checkpoint " + path + ": header dimensions overflow the weight count");
  return a * b;
}

// a + b for element counts (a, b >= 0), kept below max / 4 like checked_mul, so that a hostile
// header cannot overflow the sum of the tensor sizes either (signed overflow is UB).
int64_t checked_add(int64_t a, int64_t b, const std::string& path) {
  if (b > std::numeric_limits<int64_t>::max() / 4 - a)
    throw Error("checkpoint " + path + ": header dimensions overflow the weight count");
  return a + b;
}

// out[rows] = w[rows, cols] * x[cols]
void matvec(const float* w, int64_t rows, int64_t cols, const float* x, float* out) {
  VectorMap(out, rows).noalias() = ConstMatrixMap(w, rows, cols) * ConstVectorMap(x, cols);
}

// llama2.c rmsnorm: ss = sum(x^2) / n + eps; out = weight * (x / sqrt(ss)).
void rmsnorm(const float* x, const float* weight, int64_t n, float eps, float* out) {
  float ss = 0.0f;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  ss = ss / static_cast<float>(n) + eps;
  const float inv = 1.0f / std::sqrt(ss);
  for (int64_t i = 0; i < n; ++i) out[i] = weight[i] * (inv * x[i]);
}

void softmax(float* x, int64_t n) {
  float max = x[0];
  for (int64_t i = 1; i < n; ++i) max = std::max(max, x[i]);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  for (int64_t i = 0; i < n; ++i) x[i] /= sum;
}

// hb = silu(hb) * hb2, silu(x) = x / (1 + exp(-x)) written as llama2.c does.
void swiglu(float* hb, const float* hb2, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float v = hb[i];
    v *= 1.0f / (1.0f + std::exp(-v));
    hb[i] = v * hb2[i];
  }
}

// One query head against cached keys/values of its KV head: out[d] = softmax(q.k/sqrt(d)) . v.
// scores is scratch of `tokens` floats; keys/values are [tokens, kv_dim], column offset kv_off.
void attend_head(const float* q, const float* keys, const float* values, int64_t tokens,
                 int64_t kv_dim, int64_t kv_off, int64_t head_dim, float* scores, float* out) {
  const float scale = std::sqrt(static_cast<float>(head_dim));
  for (int64_t t = 0; t < tokens; ++t) {
    const float* k = keys + t * kv_dim + kv_off;
    float s = 0.0f;
    for (int64_t i = 0; i < head_dim; ++i) s += q[i] * k[i];
    scores[t] = s / scale;
  }
  softmax(scores, tokens);
  std::fill(out, out + head_dim, 0.0f);
  for (int64_t t = 0; t < tokens; ++t) {
    const float* v = values + t * kv_dim + kv_off;
    for (int64_t i = 0; i < head_dim; ++i) out[i] += scores[t] * v[i];
  }
}

void check_finite(const float* data, int64_t n, const std::string& path, const std::string& what) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(data[i]))
      throw Error("checkpoint " + path + ": tensor " + what + " has a non-finite value at index " +
                  std::to_string(i));
}

}  // namespace

Model Model::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw Error("checkpoint " + path + ": cannot open (" + std::strerror(errno) + ")");
  const auto actual = static_cast<int64_t>(in.tellg());
  in.seekg(0);
  if (actual < kHeaderInts * 4)
    throw Error("checkpoint " + path + ": " + std::to_string(actual) +
                " bytes, too short for the 7-int32 header (28 bytes)");
  int32_t h[kHeaderInts];
  in.read(reinterpret_cast<char*>(h), sizeof h);

  Model m;
  m.path_ = path;
  ModelConfig& c = m.config_;
  c.dim = h[0], c.hidden_dim = h[1], c.n_layers = h[2], c.n_heads = h[3], c.n_kv_heads = h[4];
  c.shared_classifier = h[5] > 0;
  c.vocab_size = h[5] == std::numeric_limits<int32_t>::min() ? 0 : std::abs(h[5]);
  c.seq_len = h[6];
  const char* names[kHeaderInts] = {"dim",        "hidden_dim", "n_layers", "n_heads",
                                    "n_kv_heads", "vocab_size", "seq_len"};
  const int32_t values[kHeaderInts] = {c.dim,        c.hidden_dim, c.n_layers, c.n_heads,
                                       c.n_kv_heads, c.vocab_size, c.seq_len};
  for (int i = 0; i < kHeaderInts; ++i)
    if (values[i] <= 0)
      throw Error("checkpoint " + path + ": header " + names[i] + " = " + std::to_string(h[i]) +
                  " must be positive (is this a llama2.c version-0 checkpoint?)");
  if (c.dim % c.n_heads != 0)
    throw Error("checkpoint " + path + ": dim " + std::to_string(c.dim) +
                " is not a multiple of n_heads " + std::to_string(c.n_heads));
  if (c.n_heads % c.n_kv_heads != 0)
    throw Error("checkpoint " + path + ": n_heads " + std::to_string(c.n_heads) +
                " is not a multiple of n_kv_heads " + std::to_string(c.n_kv_heads));
  if (c.head_dim() % 2 != 0)
    throw Error("checkpoint " + path + ": head_dim " + std::to_string(c.head_dim()) +
                " is odd; RoPE rotates pairs (2i, 2i+1)");

  // Element counts in file order (SOURCES.md "File format").
  const int64_t dim = c.dim, hidden = c.hidden_dim, L = c.n_layers, kv = c.kv_dim();
  const int64_t per_layer[kLayerTensors] = {dim,
                                            checked_mul(dim, dim, path),
                                            checked_mul(kv, dim, path),
                                            checked_mul(kv, dim, path),
                                            checked_mul(dim, dim, path),
                                            dim,
                                            checked_mul(hidden, dim, path),
                                            checked_mul(dim, hidden, path),
                                            checked_mul(hidden, dim, path)};
  const int64_t embedding = checked_mul(c.vocab_size, dim, path);
  const int64_t rope_tables = checked_mul(c.seq_len, c.head_dim(), path);  // 2 x seq_len * d/2
  int64_t total = embedding + dim + rope_tables + (c.shared_classifier ? 0 : embedding);
  for (int64_t n : per_layer) total = checked_add(total, checked_mul(L, n, path), path);
  const int64_t expected = kHeaderInts * 4 + checked_mul(total, 4, path);
  if (expected != actual)
    throw Error("checkpoint " + path + ": file has " + std::to_string(actual) +
                " bytes, but its header (dim " + std::to_string(c.dim) + ", hidden " +
                std::to_string(c.hidden_dim) + ", layers " + std::to_string(c.n_layers) +
                ", heads " + std::to_string(c.n_heads) + "/" + std::to_string(c.n_kv_heads) +
                ", vocab " + std::to_string(h[5]) + ", seq_len " + std::to_string(c.seq_len) +
                ") implies " + std::to_string(expected) + " bytes");

  m.data_.resize(static_cast<size_t>(total));
  in.read(reinterpret_cast<char*>(m.data_.data()), static_cast<std::streamsize>(total * 4));
  if (!in) throw Error("checkpoint " + path + ": read failed");

  // Offsets: file order is each tensor for all layers, tensor by tensor.
  size_t offset = 0;
  m.embedding_ = offset;
  check_finite(m.data_.data() + offset, embedding, path, "token_embedding");
  offset += static_cast<size_t>(embedding);
  m.layer_offsets_.assign(static_cast<size_t>(L * kLayerTensors), 0);
  for (int t = 0; t < kLayerTensors; ++t) {
    for (int64_t l = 0; l < L; ++l) {
      m.layer_offsets_[static_cast<size_t>(l * kLayerTensors + t)] = offset;
      check_finite(m.data_.data() + offset, per_layer[t], path,
                   "layers." + std::to_string(l) + "." + kLayerTensorNames[t]);
      offset += static_cast<size_t>(per_layer[t]);
    }
  }
  m.rms_final_ = offset;
  check_finite(m.data_.data() + offset, dim, path, "rms_final");
  offset += static_cast<size_t>(dim + rope_tables);  // the legacy RoPE tables are not used
  m.classifier_ = c.shared_classifier ? m.embedding_ : offset;
  if (!c.shared_classifier) check_finite(m.data_.data() + offset, embedding, path, "classifier");
  return m;
}

std::string Model::name() const {
  return std::filesystem::path(path_).stem().string();
}

LayerWeights Model::layer(int l) const {
  if (l < 0 || l >= config_.n_layers)
    throw Error("checkpoint " + path_ + ": layer " + std::to_string(l) + " outside [0, " +
                std::to_string(config_.n_layers) + ")");
  const size_t* o = layer_offsets_.data() + static_cast<size_t>(l) * kLayerTensors;
  const float* d = data_.data();
  return {d + o[0], d + o[1], d + o[2], d + o[3], d + o[4], d + o[5], d + o[6], d + o[7], d + o[8]};
}

void require_matching_tokenizer(const Model& model, const Tokenizer& tokenizer) {
  if (tokenizer.vocab_size() != model.config().vocab_size)
    throw Error("tokenizer " + tokenizer.path() + " has " + std::to_string(tokenizer.vocab_size()) +
                " tokens but checkpoint " + model.path() + " has a vocabulary of " +
                std::to_string(model.config().vocab_size));
}

Decoder::Decoder(const Model& model, KvCache& cache) : model_(model), cache_(cache) {
  const ModelConfig& c = model.config();
  const auto size = [](int64_t n) { return static_cast<size_t>(n); };
  x_.resize(size(c.dim));
  xb_.resize(size(c.dim));
  xb2_.resize(size(c.dim));
  hb_.resize(size(c.hidden_dim));
  hb2_.resize(size(c.hidden_dim));
  q_.resize(size(c.dim));
  k_pre_.resize(size(c.kv_dim()));
  k_.resize(size(c.kv_dim()));
  v_.resize(size(c.kv_dim()));
  att_.resize(size(c.n_heads) * size(c.seq_len));  // one score row per head
  logits_.resize(size(c.vocab_size));
}

std::span<const float> Decoder::step(int32_t token) {
  const ModelConfig& c = model_.config();
  if (token < 0 || token >= c.vocab_size)
    throw Error("decode: token id " + std::to_string(token) + " outside the vocabulary [0, " +
                std::to_string(c.vocab_size) + ") of " + model_.path());
  if (position_ >= c.seq_len)
    throw Error("decode: position " + std::to_string(position_) + " is past seq_len " +
                std::to_string(c.seq_len) + " of " + model_.path());
  const int64_t dim = c.dim, d = c.head_dim(), kv_dim = c.kv_dim();
  const int64_t group = c.n_heads / c.n_kv_heads;
  std::copy_n(model_.token_embedding() + token * dim, dim, x_.begin());

  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights w = model_.layer(l);
    rmsnorm(x_.data(), w.rms_att, dim, c.norm_eps, xb_.data());
    matvec(w.wq, dim, dim, xb_.data(), q_.data());
    matvec(w.wk, kv_dim, dim, xb_.data(), k_pre_.data());
    matvec(w.wv, kv_dim, dim, xb_.data(), v_.data());
    apply_rope(q_, c.n_heads, d, position_, c.rope_theta);
    k_ = k_pre_;
    apply_rope(k_, c.n_kv_heads, d, position_, c.rope_theta);
    if (hook_) hook_({l, position_, x_, q_, k_pre_, k_, v_});
    cache_.append({l, position_, k_pre_, k_, v_, x_});

    const std::span<const float> keys = cache_.keys(l), values = cache_.values(l);
    const int64_t tokens = static_cast<int64_t>(keys.size()) / kv_dim;
    if (tokens != position_ + 1 || static_cast<int64_t>(values.size()) != tokens * kv_dim)
      throw Error("decode: the KV cache of layer " + std::to_string(l) + " holds " +
                  std::to_string(tokens) + " tokens after position " + std::to_string(position_));
      // Heads are independent; threads pay off only for long caches of large models (inside the
      // chunk-parallel perplexity loop this nested region runs on one thread).
#pragma omp parallel for if (tokens * c.n_heads * d >= kParallelAttentionWork)
    for (int64_t h = 0; h < c.n_heads; ++h)
      attend_head(q_.data() + h * d, keys.data(), values.data(), tokens, kv_dim, (h / group) * d, d,
                  att_.data() + h * c.seq_len, xb_.data() + h * d);
    matvec(w.wo, dim, dim, xb_.data(), xb2_.data());
    for (int64_t i = 0; i < dim; ++i) x_[i] += xb2_[i];

    rmsnorm(x_.data(), w.rms_ffn, dim, c.norm_eps, xb_.data());
    matvec(w.w1, c.hidden_dim, dim, xb_.data(), hb_.data());
    matvec(w.w3, c.hidden_dim, dim, xb_.data(), hb2_.data());
    swiglu(hb_.data(), hb2_.data(), c.hidden_dim);
    matvec(w.w2, dim, c.hidden_dim, hb_.data(), xb_.data());
    for (int64_t i = 0; i < dim; ++i) x_[i] += xb_[i];
  }
  rmsnorm(x_.data(), model_.rms_final(), dim, c.norm_eps, xb_.data());
  matvec(model_.classifier(), c.vocab_size, dim, xb_.data(), logits_.data());
  ++position_;
  return logits_;
}

std::vector<float> forward_sequence(const Model& model, std::span<const int32_t> tokens) {
  const ModelConfig& c = model.config();
  const auto T = static_cast<int64_t>(tokens.size());
  if (T > c.seq_len)
    throw Error("forward: " + std::to_string(T) + " tokens exceed seq_len " +
                std::to_string(c.seq_len) + " of " + model.path());
  const int64_t dim = c.dim, d = c.head_dim(), kv_dim = c.kv_dim();
  const int64_t group = c.n_heads / c.n_kv_heads;
  RowMatrix x(T, dim), xn(T, dim), attn(T, dim);
  for (int64_t t = 0; t < T; ++t) {
    if (tokens[t] < 0 || tokens[t] >= c.vocab_size)
      throw Error("forward: token " + std::to_string(t) + " has id " + std::to_string(tokens[t]) +
                  " outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
    std::copy_n(model.token_embedding() + tokens[t] * dim, dim, x.row(t).data());
  }
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights w = model.layer(l);
    for (int64_t t = 0; t < T; ++t)
      rmsnorm(x.row(t).data(), w.rms_att, dim, c.norm_eps, xn.row(t).data());
    RowMatrix q = xn * ConstMatrixMap(w.wq, dim, dim).transpose();
    RowMatrix k = xn * ConstMatrixMap(w.wk, kv_dim, dim).transpose();
    const RowMatrix v = xn * ConstMatrixMap(w.wv, kv_dim, dim).transpose();
    for (int64_t t = 0; t < T; ++t) {
      apply_rope({q.row(t).data(), static_cast<size_t>(dim)}, c.n_heads, d, t, c.rope_theta);
      apply_rope({k.row(t).data(), static_cast<size_t>(kv_dim)}, c.n_kv_heads, d, t, c.rope_theta);
    }
    // Causal attention: query t reads keys 0..t. Rows are independent, so threads split them.
#pragma omp parallel for schedule(dynamic, 8)
    for (int64_t t = 0; t < T; ++t) {
      std::vector<float> scores(static_cast<size_t>(t + 1));
      for (int64_t h = 0; h < c.n_heads; ++h)
        attend_head(q.row(t).data() + h * d, k.data(), v.data(), t + 1, kv_dim, (h / group) * d, d,
                    scores.data(), attn.row(t).data() + h * d);
    }
    x += attn * ConstMatrixMap(w.wo, dim, dim).transpose();
    for (int64_t t = 0; t < T; ++t)
      rmsnorm(x.row(t).data(), w.rms_ffn, dim, c.norm_eps, xn.row(t).data());
    RowMatrix hb = xn * ConstMatrixMap(w.w1, c.hidden_dim, dim).transpose();
    const RowMatrix hb2 = xn * ConstMatrixMap(w.w3, c.hidden_dim, dim).transpose();
    for (int64_t t = 0; t < T; ++t) swiglu(hb.row(t).data(), hb2.row(t).data(), c.hidden_dim);
    x += hb * ConstMatrixMap(w.w2, dim, c.hidden_dim).transpose();
  }
  for (int64_t t = 0; t < T; ++t)
    rmsnorm(x.row(t).data(), model.rms_final(), dim, c.norm_eps, xn.row(t).data());
  const RowMatrix logits = xn * ConstMatrixMap(model.classifier(), c.vocab_size, dim).transpose();
  return {logits.data(), logits.data() + logits.size()};
}

std::vector<int32_t> generate_greedy(const Model& model, int steps) {
  Fp32KvCache cache(model.config().n_layers);
  Decoder decoder(model, cache);
  std::vector<int32_t> out;
  int32_t token = kBosId;
  for (int i = 0; i < steps && decoder.position() < model.config().seq_len; ++i) {
    const std::span<const float> logits = decoder.step(token);
    token = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    if (token == kBosId) break;  // llama2.c: BOS delimits sequences
    out.push_back(token);
  }
  return out;
}

}  // namespace kvq
