// Perplexity of a llama2.c model over a text with the KV cache passed through a method on
// append (docs/spec.md §9): ids cut into chunks of W - 1, each prefixed with BOS and run from an
// empty cache; PPL = exp(sum NLL / N) over every predicted token.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "harness/model/kv_cache.h"
#include "harness/model/llama2.h"
#include "reference/methods.h"

namespace kvq {

// docs/spec.md §9: consecutive chunks of window - 1 ids, each with BOS (id 1) in front; a chunk
// with no text token is dropped. Throws kvq::Error when window < 2.
std::vector<std::vector<int32_t>> ppl_chunks(std::span<const int32_t> ids, int64_t window);

struct PplResult {
  double nll_sum = 0.0;   // sum over predicted tokens of -log p(token), natural log
  int64_t predicted = 0;  // N
  int64_t chunks = 0;
  CacheBits storage;     // summed over chunks, K and V of every layer
  double seconds = 0.0;  // wall time of the evaluation
  double mean_nll() const { return predicted ? nll_sum / static_cast<double>(predicted) : 0.0; }
  double ppl() const;  // exp(mean_nll)
  double bits_per_element() const;
};

// Builds the cache one chunk runs through (called once per chunk, possibly from several
// threads at once).
using KvCacheFactory = std::function<std::unique_ptr<KvCache>()>;
// progress(done_chunks, total_chunks), called from one thread at a time.
using PplProgress = std::function<void(int64_t, int64_t)>;

// Chunks run in parallel (OpenMP); per-chunk sums are added in chunk order, so the result does
// not depend on the thread count.
PplResult perplexity(const Model& model, const std::vector<std::vector<int32_t>>& chunks,
                     const KvCacheFactory& make_cache, const PplProgress& progress = {});

// A cache whose appended rows go through `params`' method (reference/methods.h
// IncrementalCache, one per layer) before attention reads them. `calibration` holds the
// whole-sequence decisions (rotatekv permutation, KVSink l*/C*), from calibrate_for_ppl.
std::unique_ptr<KvCache> make_method_cache(const ModelConfig& config, const MethodParams& params,
                                           const Calibration& calibration);

// Calibration for a method on the fp32 activations of `calibration_chunk` (BOS + ids) recorded
// through the model: the rotatekv permutation and the KVSink l*/C*/median (reference calibrate).
Calibration calibrate_for_ppl(const Model& model, std::span<const int32_t> calibration_chunk,
                              const MethodParams& params);

}  // namespace kvq
