#include "verify/metrics.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <string>

#include "reference/error.h"

namespace kvq {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

void same_length(size_t a, size_t b, const char* what) {
  if (a != b)
    throw Error(std::string(what) + ": inputs of different lengths (" + std::to_string(a) +
                " and " + std::to_string(b) + ")");
}

bool all_finite(std::span<const double> v) {
  return std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); });
}

// Normalized copy of a probability vector; checks the entries (see kl_divergence).
std::vector<double> normalized(std::span<const double> p, const char* which) {
  double sum = 0.0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (!std::isfinite(p[i]) || p[i] < 0.0)
      throw Error(std::string("kl_divergence: ") + which + "[" + std::to_string(i) +
                  "] is not a finite non-negative number");
    sum += p[i];
  }
  if (!(sum > 0.0)) throw Error(std::string("kl_divergence: ") + which + " sums to zero");
  std::vector<double> out(p.begin(), p.end());
  for (double& x : out) x /= sum;
  return out;
}

template <class T>
SetComparison<T> compare_sets_impl(std::span<const T> truth, std::span<const T> predicted) {
  std::vector<T> t(truth.begin(), truth.end()), p(predicted.begin(), predicted.end());
  std::sort(t.begin(), t.end());
  t.erase(std::unique(t.begin(), t.end()), t.end());
  std::sort(p.begin(), p.end());
  p.erase(std::unique(p.begin(), p.end()), p.end());
  SetComparison<T> out;
  std::set_difference(t.begin(), t.end(), p.begin(), p.end(), std::back_inserter(out.missed));
  std::set_difference(p.begin(), p.end(), t.begin(), t.end(), std::back_inserter(out.extra));
  out.true_positives = static_cast<int64_t>(t.size() - out.missed.size());
  const auto tp = static_cast<double>(out.true_positives);
  out.precision = p.empty() ? 1.0 : tp / static_cast<double>(p.size());
  out.recall = t.empty() ? 1.0 : tp / static_cast<double>(t.size());
  return out;
}

}  // namespace

double max_relative_error(std::span<const double> reference, std::span<const double> got) {
  same_length(reference.size(), got.size(), "max_relative_error");
  if (!all_finite(reference) || !all_finite(got)) return kInf;
  double scale = 0.0, err = 0.0;
  for (size_t i = 0; i < reference.size(); ++i) {
    scale = std::max(scale, std::fabs(reference[i]));
    err = std::max(err, std::fabs(got[i] - reference[i]));
  }
  if (err == 0.0) return 0.0;
  return scale == 0.0 ? kInf : err / scale;
}

double relative_l2_error(std::span<const double> reference, std::span<const double> got) {
  const double n = nmse_f64(reference, got);
  return std::isinf(n) ? kInf : std::sqrt(n);
}

double nmse_f64(std::span<const double> reference, std::span<const double> got) {
  same_length(reference.size(), got.size(), "nmse");
  if (!all_finite(reference) || !all_finite(got)) return kInf;
  double err = 0.0, ref = 0.0;
  for (size_t i = 0; i < reference.size(); ++i) {
    const double d = got[i] - reference[i];
    err += d * d;
    ref += reference[i] * reference[i];
  }
  if (err == 0.0) return 0.0;
  return ref == 0.0 ? kInf : err / ref;
}

double kl_divergence(std::span<const double> p, std::span<const double> q) {
  same_length(p.size(), q.size(), "kl_divergence");
  const std::vector<double> pn = normalized(p, "p"), qn = normalized(q, "q");
  double kl = 0.0;
  for (size_t i = 0; i < pn.size(); ++i) {
    if (pn[i] == 0.0) continue;
    if (qn[i] == 0.0) return kInf;
    kl += pn[i] * std::log(pn[i] / qn[i]);
  }
  // Rounding can leave a tiny negative sum for identical inputs; KL is never negative.
  return std::max(kl, 0.0);
}

std::vector<double> softmax_f64(std::span<const double> logits) {
  if (logits.empty()) throw Error("softmax: no logits");
  if (!all_finite(logits)) throw Error("softmax: non-finite logit");
  const double m = *std::max_element(logits.begin(), logits.end());
  std::vector<double> out(logits.size());
  double sum = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) sum += out[i] = std::exp(logits[i] - m);
  for (double& x : out) x /= sum;
  return out;
}

double kl_divergence_logits(std::span<const double> logits_p, std::span<const double> logits_q) {
  same_length(logits_p.size(), logits_q.size(), "kl_divergence_logits");
  return kl_divergence(softmax_f64(logits_p), softmax_f64(logits_q));
}

SetComparison<int64_t> compare_sets(std::span<const int64_t> truth,
                                    std::span<const int64_t> predicted) {
  return compare_sets_impl(truth, predicted);
}

SetComparison<LayerExpert> compare_sets(std::span<const LayerExpert> truth,
                                        std::span<const LayerExpert> predicted) {
  return compare_sets_impl(truth, predicted);
}

}  // namespace kvq
