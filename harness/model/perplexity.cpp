#include "harness/model/perplexity.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <mutex>

#include "harness/model/recorder.h"
#include "harness/model/tokenizer.h"
#include "reference/error.h"

namespace kvq {
namespace {

// -log softmax(logits)[target], in fp64 from the fp32 logits.
double token_nll(std::span<const float> logits, int32_t target) {
  double max = logits[0];
  for (float v : logits) max = std::max(max, static_cast<double>(v));
  double sum = 0.0;
  for (float v : logits) sum += std::exp(static_cast<double>(v) - max);
  return max + std::log(sum) - static_cast<double>(logits[static_cast<size_t>(target)]);
}

// One IncrementalCache per layer. KVSink predicts a token's sink status once, when it enters
// l* (docs/spec.md §4); later layers of the same token receive that decision, earlier layers cannot
// know it yet and let the method decide (methods.h IncrementalCache).
class MethodKvCache final : public KvCache {
 public:
  MethodKvCache(const ModelConfig& c, const MethodParams& params, const Calibration& calib)
      : kvsink_layer_(params.method == Method::KvSinkKvQuant ? calib.kvsink.layer : -1) {
    layers_.reserve(static_cast<size_t>(c.n_layers));
    for (int l = 0; l < c.n_layers; ++l) {
      LayerCalibration lc;
      if (static_cast<size_t>(l) < calib.k_perm.size()) lc.k_perm = calib.k_perm[l];
      lc.kvsink = calib.kvsink;
      layers_.emplace_back(params, c.n_kv_heads, c.head_dim(), l, c.n_layers, std::move(lc));
    }
  }

  void append(const KvAppend& rows) override {
    TokenRows t;
    t.k_pre_rope = rows.k_pre_rope;
    t.k = rows.k;
    t.v = rows.v;
    t.hidden_in = rows.hidden_in;
    t.position = rows.position;
    t.sink = -1;
    if (kvsink_layer_ >= 0 && rows.layer > kvsink_layer_) t.sink = sink_decision_ ? 1 : 0;
    IncrementalCache& cache = layers_.at(static_cast<size_t>(rows.layer));
    cache.append(t);
    if (rows.layer == kvsink_layer_) sink_decision_ = cache.kept(rows.position);
  }
  std::span<const float> keys(int layer) const override {
    return layers_.at(static_cast<size_t>(layer)).keys();
  }
  std::span<const float> values(int layer) const override {
    return layers_.at(static_cast<size_t>(layer)).values();
  }
  CacheBits storage() const override {
    CacheBits b;
    for (const IncrementalCache& c : layers_) {
      const StorageBits k = c.k_storage(), v = c.v_storage();
      b.bits += k.total() + v.total();
      b.elements += k.elements + v.elements;
    }
    return b;
  }

 private:
  std::vector<IncrementalCache> layers_;
  int64_t kvsink_layer_;
  bool sink_decision_ = false;
};

}  // namespace

std::vector<std::vector<int32_t>> ppl_chunks(std::span<const int32_t> ids, int64_t window) {
  if (window < 2)
    throw Error("ppl: window " + std::to_string(window) +
                " must be at least 2 (BOS + one token per chunk)");
  std::vector<std::vector<int32_t>> chunks;
  const auto n = static_cast<int64_t>(ids.size());
  for (int64_t begin = 0; begin < n; begin += window - 1) {
    const int64_t end = std::min(n, begin + window - 1);
    std::vector<int32_t> chunk = {kBosId};
    chunk.insert(chunk.end(), ids.begin() + begin, ids.begin() + end);
    chunks.push_back(std::move(chunk));
  }
  return chunks;
}

double PplResult::ppl() const {
  return std::exp(mean_nll());
}

double PplResult::bits_per_element() const {
  return storage.elements
             ? static_cast<double>(storage.bits) / static_cast<double>(storage.elements)
             : 0.0;
}

PplResult perplexity(const Model& model, const std::vector<std::vector<int32_t>>& chunks,
                     const KvCacheFactory& make_cache, const PplProgress& progress) {
  const auto start = std::chrono::steady_clock::now();
  const auto count = static_cast<int64_t>(chunks.size());
  for (int64_t i = 0; i < count; ++i) {
    const auto& chunk = chunks[static_cast<size_t>(i)];
    if (chunk.size() < 2 || chunk.front() != kBosId)
      throw Error("ppl: chunk " + std::to_string(i) +
                  " must be BOS followed by at least one token");
    if (static_cast<int64_t>(chunk.size()) - 1 > model.config().seq_len)
      throw Error("ppl: chunk " + std::to_string(i) + " needs " + std::to_string(chunk.size() - 1) +
                  " positions, more than seq_len " + std::to_string(model.config().seq_len) +
                  " of " + model.path() + " (use a smaller --window)");
  }
  std::vector<double> nll(static_cast<size_t>(count), 0.0);
  std::vector<CacheBits> bits(static_cast<size_t>(count));
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::exception_ptr failure;

  // Chunks are independent sequences, so threads take whole chunks; the model is read-only.
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < count; ++i) {
    try {
      const auto& chunk = chunks[static_cast<size_t>(i)];
      const std::unique_ptr<KvCache> cache = make_cache();
      Decoder decoder(model, *cache);
      double sum = 0.0;
      // Position t predicts chunk[t + 1]; the last token is never fed.
      for (size_t t = 0; t + 1 < chunk.size(); ++t)
        sum += token_nll(decoder.step(chunk[t]), chunk[t + 1]);
      nll[static_cast<size_t>(i)] = sum;
      bits[static_cast<size_t>(i)] = cache->storage();
      const int64_t finished = ++done;
      if (progress) {
        const std::lock_guard<std::mutex> lock(mutex);
        progress(finished, count);
      }
    } catch (...) {
      const std::lock_guard<std::mutex> lock(mutex);
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);

  PplResult r;
  r.chunks = count;
  for (int64_t i = 0; i < count; ++i) {
    r.nll_sum += nll[static_cast<size_t>(i)];
    r.predicted += static_cast<int64_t>(chunks[static_cast<size_t>(i)].size()) - 1;
    r.storage.bits += bits[static_cast<size_t>(i)].bits;
    r.storage.elements += bits[static_cast<size_t>(i)].elements;
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

std::unique_ptr<KvCache> make_method_cache(const ModelConfig& config, const MethodParams& params,
                                           const Calibration& calibration) {
  if (params.method == Method::Fp32) return std::make_unique<Fp32KvCache>(config.n_layers);
  return std::make_unique<MethodKvCache>(config, params, calibration);
}

Calibration calibrate_for_ppl(const Model& model, std::span<const int32_t> calibration_chunk,
                              const MethodParams& params) {
  if (params.method == Method::Fp32) return {};  // nothing to calibrate
  const ModelConfig& c = model.config();
  const Recording rec = record_activations(model, calibration_chunk);
  std::vector<LayerTensors> layers;
  for (const LayerRecording& l : rec.layers) {
    LayerTensors t;
    t.shape = {rec.size(), c.n_kv_heads, c.head_dim()};
    t.q_heads = c.n_heads;
    t.hidden_size = c.dim;
    t.k = l.k;
    t.k_pre_rope = l.k_pre_rope;
    t.v = l.v;
    t.hidden_in = l.hidden_in;
    t.q = l.q;
    layers.push_back(t);
  }
  return calibrate(layers, params);
}

}  // namespace kvq
