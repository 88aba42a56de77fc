// Study op "method" (docs/spec.md §8 accuracy): a method applied to every layer of a recording (a
// .safetensors path, a synthetic one from harness/synth, or a llama2.c recording made on the fly,
// harness/recording/case_recording.h), measured against the fp32 cache on the reference. With a
// `model` key, also the docs/spec.md §9 perplexity of that model with the method's cache and the
// fp32 one.
#pragma once

#include <cstdint>
#include <span>

#include "harness/studies/studies.h"
#include "reference/methods.h"
#include "reference/rotation.h"

namespace kvq {

// Measurements (backend "ref"): kv_nmse, k_nmse, v_nmse, attention_rel_error (max |err| / max
// |ref| of the newest query's decode output, maximum over layers), attention_rel_l2 (||err|| /
// ||ref||, sums of squares pooled over layers), bits_per_element, time, score_kl; with `model`:
// ppl, ppl_fp32. Throws kvq::Error naming the case.
StudyOutcome method_study(const ScenarioCase& c);

// The case's method parameters (method, bits, group, window, clip, zero_point, head_group;
// MethodParams' defaults for the keys it lacks).
// A method case's parameters (op method and memory).
MethodParams method_params(const MethodKeys& k);

// score_kl of one layer: the newest token's query `q` [q_heads, d] (post-RoPE) over all T keys,
// probabilities P from `k_exact` and Q from `k_method` (both [T, H_kv * d], post-RoPE), in fp64:
// s_j = sum_c q[c] k_j[c] / sqrt(d), log P_j = s_j - logsumexp(s) (likewise Q), and
// KL(P || Q) = sum_j P_j (log P_j - log Q_j), averaged over the query heads (KV head of query
// head h: h / (q_heads / H_kv)). Throws kvq::Error on mismatched sizes.
double attention_score_kl(std::span<const float> q, int64_t q_heads, const KvShape& shape,
                          std::span<const float> k_exact, std::span<const float> k_method);

}  // namespace kvq
