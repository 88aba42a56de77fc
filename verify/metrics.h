// Accuracy metrics of a method against the unquantized baseline (docs/spec.md §7, §8) and set
// comparison of detector decisions (STYLE.md rule 13). All accumulation in fp64.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace kvq {

// max_i |got_i - ref_i| / max_i |ref_i| (docs/spec.md §7's "max relative error of o"); 0 when both
// are all zero, +inf when the reference is all zero and `got` is not, or any value is non-finite.
double max_relative_error(std::span<const double> reference, std::span<const double> got);
// ||got - ref||_2 / ||ref||_2, with the same conventions.
double relative_l2_error(std::span<const double> reference, std::span<const double> got);
// sum (got - ref)^2 / sum ref^2 in fp64 (fp64 inputs; verify/compare.h has the fp32 one).
double nmse_f64(std::span<const double> reference, std::span<const double> got);

// KL(P || Q) = sum_i p_i log(p_i / q_i), natural log, fp64; each input is normalized by its own
// sum first (terms with p_i = 0 contribute 0; p_i > 0 with q_i = 0 gives +inf). Throws kvq::Error
// on different lengths, a negative or non-finite entry, or a zero sum.
double kl_divergence(std::span<const double> p, std::span<const double> q);
// The same between softmax(logits_p) and softmax(logits_q), softmax computed in fp64 with the
// maximum subtracted.
double kl_divergence_logits(std::span<const double> logits_p, std::span<const double> logits_q);
std::vector<double> softmax_f64(std::span<const double> logits);

// Predicted set against the true set (duplicates collapse). precision = |P ∩ T| / |P| (1 when P
// is empty), recall = |P ∩ T| / |T| (1 when T is empty); `missed` = T \ P, `extra` = P \ T, both
// sorted ascending.
template <class T>
struct SetComparison {
  double precision = 1.0, recall = 1.0;
  int64_t true_positives = 0;
  std::vector<T> missed, extra;
  bool exact() const { return missed.empty() && extra.empty(); }
};
// Sink tokens (token indices).
SetComparison<int64_t> compare_sets(std::span<const int64_t> truth,
                                    std::span<const int64_t> predicted);
// Super Experts ((layer, expert) pairs).
using LayerExpert = std::pair<int64_t, int64_t>;
SetComparison<LayerExpert> compare_sets(std::span<const LayerExpert> truth,
                                        std::span<const LayerExpert> predicted);

}  // namespace kvq
