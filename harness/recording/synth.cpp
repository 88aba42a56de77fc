#include "harness/recording/synth.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numbers>
#include <span>

#include "harness/io/safetensors.h"
#include "reference/attention.h"
#include "reference/error.h"

namespace kvq {
namespace {

// Planted structure (why these values: docs/spec.md §4 and §5 must pick exactly the planted items
// with wide margins; see the comments where each is used).
constexpr int64_t kMassiveLayer = 1;       // massive activations enter the residual from layer 1
constexpr int64_t kDelimiterToken = 5;     // the non-initial massive/sink token
constexpr int64_t kImageStart = 8;         // first image token
constexpr int64_t kOutliersPerHead = 2;    // outlier channels of pre-RoPE K per KV head
constexpr double kSinkKey = 8.0;           // sink tokens' key on the lowest-frequency RoPE pair
constexpr double kSinkLogit = 6.0;         // q . k_sink / sqrt(d) of an aligned query
constexpr double kTextKey = 4.0;           // text tokens' key marker (text_attention > 0)
constexpr double kSuperExpertPeak = 2400;  // down_proj max-abs of the strongest Super Expert
constexpr int64_t kVocab = 32000;
constexpr int32_t kBos = 1, kDelimiterId = 13, kImageId = kVocab - 1;

// splitmix64 (Steele, Lea, Flood 2014) and fp64 Box-Muller: the same numbers everywhere,
// unlike std::normal_distribution whose algorithm is implementation-defined.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1p-53; }  // [0, 1)
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  int64_t below(int64_t n) { return static_cast<int64_t>(next() % static_cast<uint64_t>(n)); }
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = 1.0 - uniform();  // (0, 1]: log is finite
    const double u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2.0 * std::numbers::pi * u2);
    has_spare_ = true;
    return r * std::cos(2.0 * std::numbers::pi * u2);
  }
  // A normal draw clamped to +-3 sigma, for planted magnitudes that must keep their margins.
  double bounded_normal() { return std::clamp(normal(), -3.0, 3.0); }
  // k distinct values of [0, n), in draw order (partial Fisher-Yates).
  std::vector<int64_t> distinct(int64_t k, int64_t n) {
    std::vector<int64_t> all(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) all[static_cast<size_t>(i)] = i;
    for (int64_t i = 0; i < k; ++i)
      std::swap(all[static_cast<size_t>(i)], all[static_cast<size_t>(i + below(n - i))]);
    all.resize(static_cast<size_t>(k));
    return all;
  }

 private:
  uint64_t state_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

void require(bool ok, const std::string& message) {
  if (!ok) throw Error("synth: " + message);
}

void check_params(const SynthParams& p) {
  constexpr int64_t kMaxDim = 1 << 20;
  const auto in_range = [](int64_t v, int64_t lo) { return v >= lo && v <= kMaxDim; };
  require(in_range(p.layers, 3),
          "--layers must be in [3, 2^20] (docs/spec.md §4 ground truth "
          "reads layers >= 2)");
  require(in_range(p.tokens, 80),
          "--tokens must be in [80, 2^20] (sink token 5 must lie at or "
          "before T - 64)");
  require(in_range(p.heads, 1) && in_range(p.kv_heads, 1) && p.heads % p.kv_heads == 0,
          "--heads must be a positive multiple of --kv-heads");
  require(in_range(p.head_dim, 4) && p.head_dim % 2 == 0,
          "--head-dim must be even and >= 4 (RoPE pairs; one pair carries the sink key)");
  require(in_range(p.hidden, 2), "--hidden must be >= 2");
  require(p.experts >= 0 && p.experts <= kMaxDim, "--experts must be in [0, 2^20]");
  require(p.experts == 0 || (p.top_k >= 1 && p.top_k <= p.experts),
          "--top-k must be in [1, --experts]");
  require(p.image_tokens >= 0 && kImageStart + p.image_tokens <= p.tokens,
          "--image-tokens must be in [0, tokens - 8] (the block starts at token 8)");
  require(std::isfinite(p.rope_theta) && p.rope_theta > 1.0f, "rope theta must be > 1");
  require(std::isfinite(p.text_attention) && p.text_attention >= 0.0 && p.text_attention <= 20.0,
          "--text-attention must be in [0, 20] nats");
  require(p.text_attention == 0.0 || p.head_dim >= 16,
          "--text-attention needs --head-dim >= 16 (its RoPE pair must turn slowly)");
  const int64_t per_layer = p.tokens * std::max(p.heads * p.head_dim, p.hidden);
  require(per_layer <= (int64_t{1} << 30), "a layer tensor would exceed 2^30 elements");
  require(p.layers <= (int64_t{1} << 31) / per_layer,
          "--layers x a layer's tensor would exceed 2^31 elements (" + std::to_string(p.layers) +
              " x " + std::to_string(per_layer) + ")");
  for (const auto& [layer, expert] : p.pruned_experts)
    require(layer >= 0 && layer < p.layers && expert >= 0 && expert < p.experts,
            "pruned expert (" + std::to_string(layer) + ", " + std::to_string(expert) +
                ") is outside layers [0, " + std::to_string(p.layers) + ") x experts [0, " +
                std::to_string(p.experts) + ")");
}

bool is_pruned(const SynthParams& p, int64_t layer, int64_t expert) {
  return std::find(p.pruned_experts.begin(), p.pruned_experts.end(),
                   std::make_pair(layer, expert)) != p.pruned_experts.end();
}

// The fraction of the planted massive activation present in hidden_in of each layer: the
// Super Experts of earlier layers that are not pruned, weighted by their peaks (see synth.h).
// Exactly 1.0 when none of them is pruned, so the unpruned output is unchanged bit for bit.
std::vector<double> massive_fractions(const SynthParams& p,
                                      const std::vector<std::pair<int64_t, int64_t>>& se,
                                      const std::vector<double>& peak) {
  std::vector<double> out(static_cast<size_t>(p.layers), 1.0);
  for (int64_t l = 0; l < p.layers; ++l) {
    double all = 0.0, kept = 0.0;
    bool any_pruned = false;
    for (size_t r = 0; r < se.size(); ++r) {
      if (se[r].first >= l) continue;
      all += peak[r];
      if (is_pruned(p, se[r].first, se[r].second))
        any_pruned = true;
      else
        kept += peak[r];
    }
    if (any_pruned) out[static_cast<size_t>(l)] = kept / all;
  }
  return out;
}

// docs/spec.md §5 considers layers l < round(0.75 L); Python's round is half-to-even, a half-up
// reading differs at L = 2, 6, 10, ...: take the smaller count so both readings agree.
int64_t considered_layers(int64_t layers) {
  const double x = 0.75 * static_cast<double>(layers);
  return std::min(static_cast<int64_t>(std::nearbyint(x)),
                  static_cast<int64_t>(std::floor(x + 0.5)));
}

std::string json_list(const std::vector<int64_t>& v) {
  return nlohmann::json(v).dump();
}

Tensor f32_tensor(const std::vector<double>& values, Shape shape) {
  Tensor t(DType::F32, std::move(shape));
  float* out = t.data<float>();
  for (size_t i = 0; i < values.size(); ++i) out[i] = static_cast<float>(values[i]);
  return t;
}

}  // namespace

int64_t selectable_super_experts(int64_t n) {
  if (n < 1) return 0;
  // numpy's linear percentile sits at virtual index 0.995 (n - 1); only values strictly above
  // the interpolated point pass, i.e. those at indices > floor of it.
  const auto position = static_cast<int64_t>(std::floor(0.995 * static_cast<double>(n - 1)));
  return n - 1 - position;
}

SynthRecording synthesize(const SynthParams& p) {
  check_params(p);
  Rng rng(p.seed);
  const int64_t T = p.tokens, L = p.layers, H = p.heads, Hkv = p.kv_heads, d = p.head_dim;
  const int64_t D = p.hidden, E = p.experts, K = p.top_k;
  const int64_t group = H / Hkv;
  const int64_t sink_pair = d / 2 - 1;  // lowest RoPE frequency: q . k barely turns with distance
  const int64_t text_pair = d / 2 - 2;  // the next lowest: the text marker (text_attention > 0)
  const bool text_marked = p.text_attention > 0.0;

  SynthRecording rec;
  SynthGroundTruth& truth = rec.truth;
  truth.massive_layer = kMassiveLayer;
  truth.massive_tokens = {0, kDelimiterToken};
  truth.sink_tokens = truth.massive_tokens;

  // Structure drawn first, in a fixed order.
  const std::vector<int64_t> massive_channels = rng.distinct(2, D);
  truth.massive_channels = massive_channels;
  std::sort(truth.massive_channels.begin(), truth.massive_channels.end());
  // Outlier channels (KIVI/KVQuant): a fixed sign and a magnitude 15-60x the unit-variance
  // channels, per KV head, never on the sink pair.
  std::vector<double> outlier_scale(static_cast<size_t>(Hkv * d), 0.0);  // 0: not an outlier
  const int64_t per_head = std::min<int64_t>(kOutliersPerHead, d - 2);
  for (int64_t h = 0; h < Hkv; ++h)
    for (int64_t c : rng.distinct(per_head, d - 2)) {
      const double sign = rng.uniform() < 0.5 ? -1.0 : 1.0;
      outlier_scale[static_cast<size_t>(h * d + c)] = sign * rng.uniform(15.0, 60.0);
      truth.outlier_channels.push_back(h * d + c);
    }
  std::sort(truth.outlier_channels.begin(), truth.outlier_channels.end());

  // Super Experts: as many as the strict P99.5 rule can select (at most 3), spread over the
  // considered layers, each with a peak a fixed fraction of the strongest so all clear
  // floor(max / 10) by far. Ordinary experts peak below ~10.
  std::vector<std::pair<int64_t, int64_t>> super_experts;
  std::vector<double> super_peak;
  if (E > 0) {
    const int64_t lc = considered_layers(L);
    int64_t count = std::min<int64_t>(3, selectable_super_experts(lc * E));
    // Each layer's Super Experts go into distinct routing slots of the sink tokens.
    while ((count + lc - 1) / lc > std::min(K, E)) --count;
    for (int64_t r = 0; r < count; ++r) {
      int64_t expert = rng.below(E);
      for (int64_t prev = r - lc; prev >= 0; prev -= lc)  // distinct within one layer
        if (super_experts[static_cast<size_t>(prev)].second == expert) {
          expert = (expert + 1) % E;
          prev = r;  // recheck against all earlier ones of this layer
        }
      super_experts.emplace_back(r % lc, expert);
      super_peak.push_back(kSuperExpertPeak * (1.0 - 0.2 * static_cast<double>(r)));
    }
    truth.super_experts = super_experts;
  }
  const std::vector<double> present = massive_fractions(p, super_experts, super_peak);

  const auto is_image = [&](int64_t t) {
    return t >= kImageStart && t < kImageStart + p.image_tokens;
  };
  std::vector<int32_t> token_ids(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    token_ids[static_cast<size_t>(t)] = t == 0                 ? kBos
                                        : t == kDelimiterToken ? kDelimiterId
                                        : is_image(t)
                                            ? kImageId
                                            : static_cast<int32_t>(100 + rng.below(kVocab - 200));
  }
  const auto is_sink = [&](int64_t t) { return t == 0 || t == kDelimiterToken; };
  const double q_text = p.text_attention * std::sqrt(static_cast<double>(d)) / kTextKey;

  const double q_sink = kSinkLogit * std::sqrt(static_cast<double>(d)) / kSinkKey;
  for (int64_t l = 0; l < L; ++l) {
    const std::string prefix = "layers." + std::to_string(l) + ".";
    const bool sinks_on = l >= kMassiveLayer;
    // 1.0 unless a Super Expert upstream is pruned: then the old expressions are replaced by
    // blends, so m = 1 keeps every value bit-identical by construction (the same branch).
    const double m = present[static_cast<size_t>(l)];

    // Residual stream: unit normal, plus massive activations (>= 1000 and > 250x the typical
    // token max-abs, docs/spec.md §4) at the sink tokens in two channels from the massive layer on.
    std::vector<double> hidden(static_cast<size_t>(T * D));
    for (double& x : hidden) x = rng.normal();
    if (sinks_on)
      for (int64_t t : truth.massive_tokens) {
        const double token_scale = t == 0 ? 1.0 : 0.85;
        const double a = 2000.0 * token_scale * (1.0 + 0.02 * rng.bounded_normal());
        const double b = -1200.0 * token_scale * (1.0 + 0.02 * rng.bounded_normal());
        // Residual stream = the ordinary activation + the Super Experts' share present.
        double& ha = hidden[static_cast<size_t>(t * D + massive_channels[0])];
        double& hb = hidden[static_cast<size_t>(t * D + massive_channels[1])];
        ha = m == 1.0 ? a : ha + m * a;
        hb = m == 1.0 ? b : hb + m * b;
      }

    // Keys before RoPE: unit normal, outlier channels, and for sink tokens a large key on the
    // sink pair (ordinary tokens are small there, so that pair separates sinks from the rest).
    std::vector<double> k_pre(static_cast<size_t>(T * Hkv * d));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < Hkv; ++h)
        for (int64_t c = 0; c < d; ++c) {
          const size_t ch = static_cast<size_t>(h * d + c);
          double x = rng.normal();
          if (outlier_scale[ch] != 0.0) x = outlier_scale[ch] * (1.0 + 0.1 * x);
          if (c / 2 == sink_pair) {
            x *= 0.1;
            // A sink's key is the massive activation seen through k_proj: it scales with the
            // fraction m present (m = 0: an ordinary token's key).
            const double sink_x = c % 2 == 0 ? kSinkKey : 0.0;
            if (sinks_on && is_sink(t)) x = m == 1.0 ? sink_x : m * sink_x + (1.0 - m) * x;
          }
          if (text_marked && c / 2 == text_pair)
            x = c % 2 == 0 && !is_image(t) ? kTextKey : 0.1 * x;
          k_pre[static_cast<size_t>(t * Hkv * d) + ch] = x;
        }

    // Values: unit normal; sink tokens carry small values, as observed for real sinks.
    std::vector<double> v(static_cast<size_t>(T * Hkv * d));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < Hkv * d; ++i)
        v[static_cast<size_t>(t * Hkv * d + i)] =
            rng.normal() *
            (sinks_on && is_sink(t) ? (m == 1.0 ? 0.1 : 0.1 * m + (1.0 - m)) : 1.0);

    // Queries before RoPE: unit normal, damped by 1/|scale| on the RoPE pairs of their KV head's
    // outlier channels (so outliers do not dominate the logits), and aligned with the sink key on
    // the sink pair: q . k_sink / sqrt(d) ~ kSinkLogit, versus ~N(0, 1) for ordinary tokens.
    std::vector<double> q(static_cast<size_t>(T * H * d));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t kvh = h / group;
        for (int64_t c = 0; c < d; ++c) {
          double x = rng.normal();
          const int64_t pair = c / 2;
          const double a = outlier_scale[static_cast<size_t>(kvh * d + 2 * pair)];
          const double b = outlier_scale[static_cast<size_t>(kvh * d + 2 * pair + 1)];
          const double damp = std::max(std::fabs(a), std::fabs(b));
          if (damp != 0.0) x /= damp;
          if (pair == sink_pair) x = sinks_on && c % 2 == 0 ? q_sink + 0.1 * x : 0.1 * x;
          if (text_marked && pair == text_pair)
            x = 2 * l < L && c % 2 == 0 ? q_text + 0.1 * x : 0.1 * x;
          q[static_cast<size_t>((t * H + h) * d + c)] = x;
        }
      }

    Tensor k_pre_t = f32_tensor(k_pre, {T, Hkv, d});
    Tensor k_t = k_pre_t;
    Tensor q_t = f32_tensor(q, {T, H, d});
    for (int64_t t = 0; t < T; ++t) {
      apply_rope(std::span<float>(k_t.data<float>() + t * Hkv * d, static_cast<size_t>(Hkv * d)),
                 Hkv, d, t, p.rope_theta);
      apply_rope(std::span<float>(q_t.data<float>() + t * H * d, static_cast<size_t>(H * d)), H, d,
                 t, p.rope_theta);
    }
    rec.tensors.emplace_back(prefix + "k_pre_rope", std::move(k_pre_t));
    rec.tensors.emplace_back(prefix + "k", std::move(k_t));
    rec.tensors.emplace_back(prefix + "v", f32_tensor(v, {T, Hkv, d}));
    rec.tensors.emplace_back(prefix + "q", std::move(q_t));
    rec.tensors.emplace_back(prefix + "hidden_in", f32_tensor(hidden, {T, D}));

    if (E == 0) continue;
    // Routing: token t, slot s takes perm[(t K + s) mod E] for a per-layer random permutation,
    // so each token's experts are distinct and every expert is routed once T K >= E (+ 2 for the
    // sink overrides below). Sink tokens are routed to this layer's Super Experts (slot 0 first).
    std::vector<int64_t> perm = rng.distinct(E, E);
    Tensor ids(DType::I32, {T, K}), absmax(DType::F32, {T, K}), argmax(DType::I32, {T, K});
    std::vector<double> expert_scale(static_cast<size_t>(E));
    for (double& s : expert_scale) s = rng.uniform(0.5, 1.5);
    for (int64_t t = 0; t < T; ++t) {
      int32_t* row = ids.data<int32_t>() + t * K;
      for (int64_t s = 0; s < K; ++s) row[s] = static_cast<int32_t>(perm[(t * K + s) % E]);
      for (int64_t s = 0; s < K; ++s) {
        const int32_t e = row[s];
        absmax.data<float>()[t * K + s] = static_cast<float>(
            expert_scale[static_cast<size_t>(e)] * (0.5 + std::fabs(rng.bounded_normal())));
        argmax.data<int32_t>()[t * K + s] = static_cast<int32_t>(rng.below(D));
      }
    }
    int64_t slot = 0;
    for (size_t r = 0; r < super_experts.size(); ++r) {
      if (super_experts[r].first != l) continue;
      const auto se = static_cast<int32_t>(super_experts[r].second);
      for (int64_t t : truth.massive_tokens) {
        int32_t* row = ids.data<int32_t>() + t * K;
        const int64_t target = std::min(slot, K - 1);
        const auto found = std::find(row, row + K, se);
        if (found != row + K)
          std::swap(*found, row[target]);
        else
          row[target] = se;
        const double token_scale = t == 0 ? 1.0 : 0.8;
        absmax.data<float>()[t * K + target] =
            static_cast<float>(super_peak[r] * token_scale * (1.0 + 0.01 * rng.bounded_normal()));
        argmax.data<int32_t>()[t * K + target] = static_cast<int32_t>(massive_channels[0]);
      }
      ++slot;
    }
    // Pruned experts output zero: max |down_proj output| 0, first channel.
    for (int64_t i = 0; i < T * K; ++i)
      if (is_pruned(p, l, ids.data<int32_t>()[i])) {
        absmax.data<float>()[i] = 0.0f;
        argmax.data<int32_t>()[i] = 0;
      }
    rec.tensors.emplace_back(prefix + "experts.ids", std::move(ids));
    rec.tensors.emplace_back(prefix + "experts.down_absmax", std::move(absmax));
    rec.tensors.emplace_back(prefix + "experts.down_argmax", std::move(argmax));
  }

  Tensor modality(DType::U8, {T});
  for (int64_t t = kImageStart; t < kImageStart + p.image_tokens; ++t)
    modality.data<uint8_t>()[t] = 1;
  rec.tensors.emplace_back("modality", std::move(modality));

  auto& m = rec.metadata;
  m["model"] = "synthetic";
  m["generator"] = "kvq synth";
  m["seed"] = std::to_string(p.seed);
  m["num_hidden_layers"] = std::to_string(L);
  m["num_tokens"] = std::to_string(T);
  m["num_attention_heads"] = std::to_string(H);
  m["num_key_value_heads"] = std::to_string(Hkv);
  m["head_dim"] = std::to_string(d);
  m["hidden_size"] = std::to_string(D);
  m["num_experts"] = std::to_string(E);
  m["num_experts_per_tok"] = std::to_string(E > 0 ? K : 0);
  m["image_tokens"] = std::to_string(p.image_tokens);
  m["rope_theta"] = nlohmann::json(p.rope_theta).dump();
  if (p.text_attention > 0.0) m["text_attention"] = nlohmann::json(p.text_attention).dump();
  m["vocab_size"] = std::to_string(kVocab);
  m["token_ids"] = nlohmann::json(token_ids).dump();
  m["sink_tokens"] = json_list(truth.sink_tokens);
  m["massive_tokens"] = json_list(truth.massive_tokens);
  m["massive_channels"] = json_list(truth.massive_channels);
  m["massive_layer"] = std::to_string(truth.massive_layer);
  nlohmann::json se = nlohmann::json::array();
  for (const auto& [layer, expert] : truth.super_experts) se.push_back({layer, expert});
  m["super_experts"] = se.dump();
  m["outlier_channels"] = json_list(truth.outlier_channels);
  if (!p.pruned_experts.empty()) {
    nlohmann::json pruned = nlohmann::json::array();
    for (const auto& [layer, expert] : p.pruned_experts) pruned.push_back({layer, expert});
    m["pruned_experts"] = pruned.dump();
  }
  return rec;
}

void write_recording(const std::string& path, const SynthRecording& recording) {
  std::vector<NamedTensor> tensors;
  for (const auto& [name, tensor] : recording.tensors) tensors.push_back({name, tensor.view()});
  write_safetensors(path, tensors, recording.metadata);
}

}  // namespace kvq
