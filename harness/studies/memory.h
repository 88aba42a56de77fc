// Memory study (issue 7, docs/spec.md §3 "memory per element", §8): KV-cache bytes per token of
// each method counted from the layouts the reference builds (apply_method's StorageBits on every
// layer of a recording: packed codes, fp16 scales and zeros, fp16 kept rows with their token
// index, sparse outliers, AKVQ-VL's bit map), and for a model shape the largest batch that fits
// a memory budget at a context length, fp16 vs the method. Scenario op "memory".
//
// From the recording (T tokens) to a context of N tokens: the rows a method keeps in fp16
// (window, sinks, pivots, KIVI's pending K group) are counted once per sequence, as many as it
// keeps on the recording; every other row costs the recording's quantized bits per quantized row
// (codes, scales, zeros, outliers and bit map divided by the rows they cover), so N tokens hold
// kept + (N - kept rows) x that. Exact for per-token groups; for per-channel groups (KIVI,
// KVQuant K) exact when the quantized rows fill whole groups of G, else the tail group's scales
// are spread over the rows; AKVQ-VL's cost per row is the recording's modality and TSA/PSA mix.
// The kept-row count is taken as on the recording (pivot tokens: top-k elements, at most k rows
// at any length; KIVI: the window R).
#pragma once

#include <cstdint>

#include "harness/recording/recording_layers.h"
#include "harness/studies/studies.h"
#include "reference/methods.h"

namespace kvq {

// Per layer (averaged over the recording's layers), index 0 = K, 1 = V.
struct MethodStorage {
  Method method = Method::Rtn;
  int64_t tokens = 0;    // T of the recording
  int64_t channels = 0;  // H_kv * d
  double recording_bits_per_element = 0.0;  // the whole recording, exactly as apply_method counts
  double kept_bits[2] = {0.0, 0.0};      // kept rows at T (fp16 values + token index)
  double kept_rows[2] = {0.0, 0.0};      // kept rows at T
  double quantized_row_bits[2] = {0.0, 0.0};  // bits per quantized token row, on average
  // K + V bits of one layer at a context of n tokens (n >= the kept rows).
  double layer_bits(int64_t n) const;
};

// Throws kvq::Error when the method keeps every row of the recording.
MethodStorage measure_storage(const RecordingLayers& recording, const MethodParams& params);

struct MemoryModel {
  int64_t layers = 40, kv_heads = 40, head_dim = 128;  // LLaMA-2-13B
  double budget_gib = 80.0;   // device memory
  double weights_gib = 24.2;  // LLaMA-2-13B fp16 weights (13.0e9 x 2 bytes)
};
struct MemoryResult {
  int64_t context = 0;
  double bytes_per_token = 0.0, fp16_bytes_per_token = 0.0;  // KV over all layers, at context
  double bits_per_element = 0.0;                             // at context, K and V
  int64_t max_batch = 0, fp16_max_batch = 0;
  int64_t batch = 0;            // batch at which the peak memories are compared
  double memory_ratio = 0.0;    // (weights + batch x fp16 KV) / (weights + batch x method KV)
  double kv_ratio = 0.0;        // fp16 KV bytes / method KV bytes
};
// fp16 KV: 2 bytes per element of K and V (docs/spec.md §8's baseline stored as fp16). batch <= 0:
// fp16's max batch, at least 1. Throws kvq::Error when the weights do not fit the budget or the
// storage's channels differ from the model's.
MemoryResult memory_at_context(const MethodStorage& storage, const MemoryModel& model,
                               int64_t context, int64_t batch = 0);

// The papers' claims (RotateKV: LLaMA-2-13B; AKVQ-VL), for printing beside ours; 0 when none.
struct PaperClaim {
  double memory_ratio = 0.0, batch_ratio = 0.0;
};
PaperClaim paper_claim(Method method);

// The scenario op: keys method, bits, group, window, context, layers/heads/head_dim (the model
// shape; heads = KV heads, also the synthetic recording's), budget_gib, weights_gib, batch.
StudyOutcome memory_study_case(const ScenarioCase& c);

}  // namespace kvq
