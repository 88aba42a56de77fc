#include "harness/studies/vlm.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "harness/io/safetensors.h"
#include "harness/recording/case_recording.h"
#include "harness/recording/synth.h"
#include "reference/attention.h"
#include "reference/error.h"
#include "reference/quantize.h"
#include "reference/rotation.h"

namespace kvq {
namespace {

constexpr int64_t kMapBitsPerToken = 8;  // AKVQ-VL's bit-width map, as methods.h counts it

void check_widths(const VlmParams& p) {
  for (int b : {p.bits, p.bits_hi, p.bits_pay})
    if (!valid_bits(b))
      throw Error("vlm: bit width " + std::to_string(b) + " not in {1, 2, 3, 4, 8}");
  if (!(p.bits_pay < p.bits && p.bits < p.bits_hi))
    throw Error("vlm: needs bits_pay < bits < bits_hi (got " + std::to_string(p.bits_pay) + ", " +
                std::to_string(p.bits) + ", " + std::to_string(p.bits_hi) + ")");
  if ((p.bits_hi - p.bits) % (p.bits - p.bits_pay) != 0)
    throw Error("vlm: bits_hi - bits must be a multiple of bits - bits_pay, so that whole "
                "demotions pay each promotion exactly");
  if (p.group < 1) throw Error("vlm: group must be >= 1");
}

double average(std::span<const uint8_t> bits) {
  int64_t sum = 0;
  for (uint8_t b : bits) sum += b;
  return static_cast<double>(sum) / static_cast<double>(bits.size());
}

}  // namespace

double ErrorSums::relative() const {
  return ref2 > 0.0 ? std::sqrt(err2 / ref2) : 0.0;
}

BudgetedAllocation budgeted_allocation(std::span<const int32_t> salient,
                                       std::span<const double> received, const VlmParams& params) {
  check_widths(params);
  const auto T = static_cast<int64_t>(received.size());
  BudgetedAllocation out;
  out.bits.assign(static_cast<size_t>(T), static_cast<uint8_t>(params.bits));
  std::vector<uint8_t> is_salient(static_cast<size_t>(T), 0);
  for (int32_t t : salient) {
    if (t < 0 || t >= T) throw Error("vlm: salient token " + std::to_string(t) + " outside [0, T)");
    is_salient[static_cast<size_t>(t)] = 1;
  }
  std::vector<int32_t> up, down;
  for (int32_t t = 0; t < T; ++t) (is_salient[static_cast<size_t>(t)] ? up : down).push_back(t);
  const auto by = [&](bool descending) {
    return [&, descending](int32_t a, int32_t b) {
      const double ra = received[static_cast<size_t>(a)], rb = received[static_cast<size_t>(b)];
      if (ra != rb) return descending ? ra > rb : ra < rb;
      return a < b;
    };
  };
  std::stable_sort(up.begin(), up.end(), by(true));
  std::stable_sort(down.begin(), down.end(), by(false));
  const int64_t per = (params.bits_hi - params.bits) / (params.bits - params.bits_pay);
  for (int32_t t : up) {
    if (out.demoted + per > static_cast<int64_t>(down.size())) break;
    out.bits[static_cast<size_t>(t)] = static_cast<uint8_t>(params.bits_hi);
    for (int64_t i = 0; i < per; ++i)
      out.bits[static_cast<size_t>(down[static_cast<size_t>(out.demoted++)])] =
          static_cast<uint8_t>(params.bits_pay);
    ++out.promoted;
  }
  return out;
}

std::vector<float> mixed_reconstruct(std::span<const float> x, const KvShape& shape,
                                     std::span<const uint8_t> bits, int64_t group,
                                     int64_t* storage_bits) {
  const int64_t T = shape.tokens, C = shape.channels();
  if (static_cast<int64_t>(bits.size()) != T)
    throw Error("vlm: " + std::to_string(bits.size()) + " bit widths for " + std::to_string(T) +
                " tokens");
  const std::vector<float> rotated = rotate_v(x, shape);  // per-head WHT (AKVQ-VL, docs/spec.md §8)
  std::vector<float> stored(rotated.size());
  int64_t storage = 0;
  for (int b : {1, 2, 3, 4, 8}) {
    std::vector<int64_t> rows;
    for (int64_t t = 0; t < T; ++t)
      if (bits[static_cast<size_t>(t)] == b) rows.push_back(t);
    if (rows.empty()) continue;
    const auto n = static_cast<int64_t>(rows.size());
    std::vector<float> block(static_cast<size_t>(n * C));
    for (int64_t r = 0; r < n; ++r)
      std::copy_n(rotated.begin() + rows[static_cast<size_t>(r)] * C, C, block.begin() + r * C);
    QuantParams qp;
    qp.bits = b;
    qp.group = group;
    const Quantized q = quantize(block, n, C, qp, "vlm " + std::to_string(b) + "-bit block");
    storage += static_cast<int64_t>(q.codes.size()) * 8 +
               static_cast<int64_t>(q.scale.size() + q.zero.size()) * 16;
    const std::vector<float> deq = dequantize(q);
    for (int64_t r = 0; r < n; ++r)
      std::copy_n(deq.begin() + r * C, C, stored.begin() + rows[static_cast<size_t>(r)] * C);
  }
  for (uint8_t b : bits)
    if (!valid_bits(b)) throw Error("vlm: bit width " + std::to_string(b) + " not in {1,2,3,4,8}");
  if (storage_bits) *storage_bits = storage;
  return rotate_v(stored, shape);  // self-inverse
}

ErrorSums attention_output_error(std::span<const float> q, std::span<const float> k,
                                 std::span<const float> v, std::span<const float> k_hat,
                                 std::span<const float> v_hat, const KvShape& shape,
                                 int64_t q_heads) {
  const int64_t T = shape.tokens, Hkv = shape.heads, d = shape.head_dim;
  ErrorSums out;
  std::vector<double> o(static_cast<size_t>(d)), o_hat(static_cast<size_t>(d));
  for (int64_t h = 0; h < q_heads; ++h) {
    const int64_t kvh = h / (q_heads / Hkv);
    const std::vector<double> a = causal_attention_f64(q, k, T, q_heads, Hkv, d, h);
    const std::vector<double> a_hat = causal_attention_f64(q, k_hat, T, q_heads, Hkv, d, h);
    for (int64_t i = 0; i < T; ++i) {
      std::fill(o.begin(), o.end(), 0.0);
      std::fill(o_hat.begin(), o_hat.end(), 0.0);
      for (int64_t j = 0; j <= i; ++j) {  // keys in token order
        const double p = a[static_cast<size_t>(i * T + j)];
        const double p_hat = a_hat[static_cast<size_t>(i * T + j)];
        const size_t row = static_cast<size_t>((j * Hkv + kvh) * d);
        for (int64_t c = 0; c < d; ++c) {
          o[static_cast<size_t>(c)] += p * v[row + static_cast<size_t>(c)];
          o_hat[static_cast<size_t>(c)] += p_hat * v_hat[row + static_cast<size_t>(c)];
        }
      }
      for (int64_t c = 0; c < d; ++c) {
        const double e = o_hat[static_cast<size_t>(c)] - o[static_cast<size_t>(c)];
        out.err2 += e * e;
        out.ref2 += o[static_cast<size_t>(c)] * o[static_cast<size_t>(c)];
      }
    }
  }
  return out;
}

VlmStudy run_vlm_study(const RecordingLayers& rec, const VlmParams& params) {
  check_widths(params);
  if (rec.layers.empty()) throw Error(rec.source + ": vlm: no layers");
  VlmStudy out;
  const auto L = static_cast<int64_t>(rec.layers.size());
  out.tokens = rec.tokens();
  for (uint8_t m : rec.modality) out.image_tokens += m != 0;
  AllocationParams ap = params.allocation;
  ap.bits_hi = params.bits_hi;
  ap.bits_lo = params.bits;

  // Pass 1: docs/spec.md §6's allocation of every layer, so the uniform width that spends at least
  // its average bits is known before anything is quantized.
  std::vector<std::vector<double>> received(static_cast<size_t>(L));
  std::vector<BitAllocation> spec(static_cast<size_t>(L));
  int64_t spec_code = 0;
  for (int64_t l = 0; l < L; ++l) {
    const LayerTensors& t = rec.layers[static_cast<size_t>(l)];
    const KvShape& s = t.shape;
    if (t.q_heads < s.heads || t.q_heads % s.heads != 0)
      throw Error(rec.source + ": layers." + std::to_string(l) +
                  ".q heads must be a multiple of k's");
    received[static_cast<size_t>(l)] =
        received_attention(t.q, t.k, s.tokens, t.q_heads, s.heads, s.head_dim);
    spec[static_cast<size_t>(l)] =
        allocate_bits(l, L, t.modality, received[static_cast<size_t>(l)], s.tokens, ap);
    for (uint8_t b : spec[static_cast<size_t>(l)].bits) spec_code += 2 * b * s.channels();
    out.elements += 2 * s.tokens * s.channels();
  }
  const auto e = static_cast<double>(out.elements);
  out.spec_avg_bits = static_cast<double>(spec_code) / e;
  out.above_bits = params.bits_hi;
  for (int b : {8, 4, 3, 2, 1})
    if (static_cast<double>(b) >= out.spec_avg_bits) out.above_bits = b;

  // Pass 2: quantize and measure every allocation.
  int64_t akvq_code = 0, uniform_code = 0;
  for (int64_t l = 0; l < L; ++l) {
    const LayerTensors& t = rec.layers[static_cast<size_t>(l)];
    const KvShape& s = t.shape;
    const int64_t T = s.tokens;
    const BitAllocation& sp = spec[static_cast<size_t>(l)];
    const BudgetedAllocation budget =
        budgeted_allocation(sp.salient, received[static_cast<size_t>(l)], params);
    const std::vector<uint8_t> uniform(static_cast<size_t>(T), static_cast<uint8_t>(params.bits));
    const std::vector<uint8_t> above(static_cast<size_t>(T), static_cast<uint8_t>(out.above_bits));

    VlmLayer r;
    r.layer = l;
    r.pattern = sp.pattern;
    r.salient = static_cast<int64_t>(sp.salient.size());
    r.promoted = budget.promoted;
    r.demoted = budget.demoted;
    const int64_t map_bits = 2 * T * kMapBitsPerToken;  // K and V maps
    const auto run = [&](std::span<const uint8_t> bits, ErrorSums& err, int64_t& storage,
                         double& avg, bool has_map) {
      int64_t sk = 0, sv = 0;
      const std::vector<float> k_hat = mixed_reconstruct(t.k, s, bits, params.group, &sk);
      const std::vector<float> v_hat = mixed_reconstruct(t.v, s, bits, params.group, &sv);
      err = attention_output_error(t.q, t.k, t.v, k_hat, v_hat, s, t.q_heads);
      storage = sk + sv + (has_map ? map_bits : 0);
      avg = average(bits);
    };
    run(budget.bits, r.akvq, r.akvq_storage, r.akvq_avg_bits, true);
    run(uniform, r.uniform, r.uniform_storage, r.uniform_avg_bits, false);
    run(sp.bits, r.spec, r.spec_storage, r.spec_avg_bits, true);
    double above_avg = 0.0;
    run(above, r.above, r.above_storage, above_avg, false);
    for (uint8_t b : budget.bits) akvq_code += 2 * b * s.channels();
    uniform_code += 2 * T * params.bits * s.channels();
    for (auto [pool, one] : {std::pair{&out.akvq, &r.akvq}, std::pair{&out.uniform, &r.uniform},
                             std::pair{&out.spec, &r.spec}, std::pair{&out.above, &r.above}}) {
      pool->err2 += one->err2;
      pool->ref2 += one->ref2;
    }
    out.layers.push_back(r);
  }
  out.akvq_avg_bits = static_cast<double>(akvq_code) / e;
  out.uniform_avg_bits = static_cast<double>(uniform_code) / e;
  return out;
}

StudyOutcome vlm_study_case(const ScenarioCase& c) {
  const VlmCase& k = case_keys<VlmCase>(c);
  VlmParams p;
  p.bits = static_cast<int>(k.bits);
  p.bits_hi = static_cast<int>(k.bits_hi);
  p.bits_pay = static_cast<int>(k.bits_pay.value_or(k.bits - 1));  // one level down
  p.group = k.group;
  VlmStudy s;
  if (c.input == "synthetic") {
    // Synthesized in memory rather than through the cache file (no expert tensors needed): the
    // modality mix is what this study varies. Keys as `kvq synth` names them (heads = KV heads).
    SynthParams sp = case_synth_params(k);
    sp.experts = 0;
    s = run_vlm_study(load_recording_layers(synthesize(sp)), p);
  } else {
    const SafetensorsFile file = SafetensorsFile::open(case_recording(c, k));
    s = run_vlm_study(load_recording_layers(file), p);
  }

  StudyOutcome out;
  auto add = [&](const std::string& metric, double value, const std::string& unit) {
    out.measurements.push_back({"ref", metric, value, unit, 1, 0.0});
  };
  const double elements = static_cast<double>(s.elements);
  int64_t akvq_storage = 0, uniform_storage = 0, spec_storage = 0, above_storage = 0;
  for (const VlmLayer& l : s.layers) {
    akvq_storage += l.akvq_storage;
    uniform_storage += l.uniform_storage;
    spec_storage += l.spec_storage;
    above_storage += l.above_storage;
  }
  add("akvq_attention_rel_error", s.akvq.relative(), "ratio");
  add("uniform_attention_rel_error", s.uniform.relative(), "ratio");
  add("spec_attention_rel_error", s.spec.relative(), "ratio");
  add("avg_bits", s.akvq_avg_bits, "bits");
  add("uniform_avg_bits", s.uniform_avg_bits, "bits");
  add("spec_avg_bits", s.spec_avg_bits, "bits");
  add("akvq_bits_per_element", static_cast<double>(akvq_storage) / elements, "bits");
  add("uniform_bits_per_element", static_cast<double>(uniform_storage) / elements, "bits");
  add("spec_bits_per_element", static_cast<double>(spec_storage) / elements, "bits");
  add("akvq_beats_uniform", s.akvq.relative() < s.uniform.relative() ? 1.0 : 0.0, "bool");
  // docs/spec.md §6's allocation against the narrowest uniform width that spends at least its bits.
  add("uniform_above_bits", static_cast<double>(s.above_bits), "bits");
  add("uniform_above_attention_rel_error", s.above.relative(), "ratio");
  add("uniform_above_bits_per_element", static_cast<double>(above_storage) / elements, "bits");
  add("spec_beats_uniform_above", s.spec.relative() < s.above.relative() ? 1.0 : 0.0, "bool");
  for (const VlmLayer& l : s.layers) {
    const std::string suffix = "_L" + std::to_string(l.layer);
    add("akvq_attention_rel_error" + suffix, l.akvq.relative(), "ratio");
    add("uniform_attention_rel_error" + suffix, l.uniform.relative(), "ratio");
    add("spec_attention_rel_error" + suffix, l.spec.relative(), "ratio");
    add("promoted" + suffix, static_cast<double>(l.promoted), "count");
  }
  char line[320];
  std::snprintf(line, sizeof line,
                "avg %.3f bits: akvq-vl %.4g vs uniform %.4g attention rel error (%s); SPEC "
                "allocation %.4g at %.3f bits vs uniform %d-bit %.4g (%s); %lld/%lld image tokens",
                s.akvq_avg_bits, s.akvq.relative(), s.uniform.relative(),
                s.akvq.relative() < s.uniform.relative() ? "akvq-vl better" : "uniform better",
                s.spec.relative(), s.spec_avg_bits, s.above_bits, s.above.relative(),
                s.spec.relative() < s.above.relative() ? "spec better" : "uniform better",
                static_cast<long long>(s.image_tokens), static_cast<long long>(s.tokens));
  out.note = line;
  return out;
}

}  // namespace kvq
