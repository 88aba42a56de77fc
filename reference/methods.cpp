// KV-cache compression methods of docs/spec.md §8 as compositions of rotation (§2), quantization
// (§3), sinks (§4) and bit allocation (§6). Whole-layer apply and the incremental cache share
// one row pipeline (rotate -> [outliers] -> quantize -> dequantize -> inverse rotate -> RoPE)
// whose every step is row-local or group-local, so both give the same bits for the same groups.
#include "reference/methods.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "reference/error.h"
#include "reference/half.h"
#include "reference/rotation.h"
#include "reference/tensor.h"

namespace kvq {

namespace {

constexpr int64_t kIndexBits = 32;  // int32 token / flat indices
constexpr int64_t kHalfBits = 16;

struct MethodName {
  Method method;
  const char* name;
};
constexpr MethodName kMethods[] = {
    {Method::Fp32, "fp32"},         {Method::Rtn, "rtn"},
    {Method::Kivi, "kivi"},         {Method::KvQuant, "kvquant"},
    {Method::RotateKv, "rotatekv"}, {Method::KvSinkKvQuant, "kvsink+kvquant"},
    {Method::AkvqVl, "akvq-vl"},
};

// What a method does, derived once from MethodParams (docs/spec.md §8 table).
struct Setup {
  Method method = Method::Rtn;
  bool k_pre_rope = false;
  KeyRotation k_rotation = KeyRotation::None;
  bool v_hadamard = false;
  QuantParams kq, vq;
  int64_t window = 0;
  double outliers = 0.0;        // kvquant: fraction per quantization group
  bool k_whole_groups = false;  // kivi: K groups quantized only once complete (also whole-layer)
  int bits_hi = 8;              // akvq-vl
};

Setup method_setup(const MethodParams& p) {
  const std::string m = method_name(p.method);
  if (!valid_bits(p.bits))
    throw Error("method " + m + ": bits " + std::to_string(p.bits) + " not in {1, 2, 3, 4, 8}");
  if (p.group < 1) throw Error("method " + m + ": group must be >= 1");
  if (p.window < -1) throw Error("method " + m + ": window must be >= 0 (or -1 for the default)");
  if (p.clip != -1.0f && !(p.clip > 0.0f && p.clip <= 1.0f))
    throw Error("method " + m + ": clip must be in (0, 1] (or -1 for the default)");
  if (!(p.outlier_fraction >= 0.0 && p.outlier_fraction < 1.0))
    throw Error("method " + m + ": outlier_fraction must be in [0, 1)");
  if (p.first_tokens < 0) throw Error("method " + m + ": first_tokens must be >= 0");
  if (!(p.calibration_fraction > 0.0 && p.calibration_fraction <= 1.0))
    throw Error("method " + m + ": calibration_fraction must be in (0, 1]");
  if (!std::isfinite(p.rope_theta) || p.rope_theta <= 0.0f)
    throw Error("method " + m + ": rope_theta must be positive");
  Setup s;
  s.method = p.method;
  s.k_pre_rope = method_uses_pre_rope_k(p.method);
  s.kq.bits = s.vq.bits = p.bits;
  s.kq.group = s.vq.group = p.group;
  s.kq.zero_point = s.vq.zero_point = p.zero_point;
  s.window = p.window >= 0 ? p.window : (p.method == Method::Kivi ? 128 : 0);
  // Default clip (docs/spec.md §8): RotateKV's 0.8 at 2 bits on K and V alike (its code clips
  // both), 1.0 otherwise; an explicit clip applies to both.
  const float default_clip = p.method == Method::RotateKv && p.bits == 2 ? 0.8f : 1.0f;
  s.kq.clip = s.vq.clip = p.clip > 0.0f ? p.clip : default_clip;
  switch (p.method) {
    case Method::Fp32:
    case Method::Rtn: break;
    case Method::Kivi:
      s.kq.axis = Axis::Channel;
      s.k_whole_groups = true;
      break;
    case Method::KvQuant:
    case Method::KvSinkKvQuant:
      s.kq.axis = Axis::Channel;
      s.outliers = p.outlier_fraction;
      break;
    case Method::RotateKv:
      s.k_rotation = KeyRotation::GroupedHadamard;
      s.v_hadamard = true;
      break;
    case Method::AkvqVl:
      s.k_rotation = KeyRotation::PerHeadHadamard;
      s.v_hadamard = true;
      s.bits_hi = p.allocation.bits_hi;
      if (!valid_bits(s.bits_hi))
        throw Error("method akvq-vl: bits_hi " + std::to_string(s.bits_hi) +
                    " not in {1, 2, 3, 4, 8}");
      break;
  }
  return s;
}

void check_kv(std::span<const float> x, const KvShape& shape, const std::string& what) {
  if (shape.tokens < 1 || shape.heads < 1 || shape.head_dim < 1)
    throw Error(what + ": shape needs tokens, heads and head_dim >= 1");
  const int64_t n = shape_numel({shape.tokens, shape.heads, shape.head_dim}, what);
  if (x.empty()) throw Error(what + ": tensor is missing (empty)");
  if (static_cast<int64_t>(x.size()) != n)
    throw Error(what + ": has " + std::to_string(x.size()) + " values, [" +
                std::to_string(shape.tokens) + ", " + std::to_string(shape.heads) + ", " +
                std::to_string(shape.head_dim) + "] needs " + std::to_string(n));
  require_finite(x, what);
}

uint16_t to_half_checked(float v, const std::string& what, int64_t index) {
  const uint16_t h = float_to_half(v);
  if (!std::isfinite(half_to_float(h)))
    throw Error(what + ": value at flat index " + std::to_string(index) + " (" + std::to_string(v) +
                ") overflows fp16");
  return h;
}

// f(), its kvq::Error prefixed with the tensor `what` it was working on (the rotations, shared
// with the backends, do not know the tensor's name).
template <class F> auto named(const std::string& what, F f) {
  try {
    return f();
  } catch (const Error& e) {
    throw Error(what + ": " + e.what());
  }
}

// The method's forward rotation of `rows` rows of one of K (key) or V, in place semantics.
std::vector<float> rotate_rows(bool key, const Setup& s, const RotationParams& rp,
                               std::span<const float> rows, int64_t n, const KvShape& shape) {
  const KvShape part{n, shape.heads, shape.head_dim};
  if (key) {
    switch (s.k_rotation) {
      case KeyRotation::None: break;
      case KeyRotation::GroupedHadamard: return rotate_k(rows, part, rp);
      case KeyRotation::PerHeadHadamard: return rotate_v(rows, part);
    }
  } else if (s.v_hadamard) {
    return rotate_v(rows, part);
  }
  return {rows.begin(), rows.end()};
}

std::vector<float> inverse_rotate_rows(bool key, const Setup& s, const RotationParams& rp,
                                       std::span<const float> rows, int64_t n,
                                       const KvShape& shape) {
  const KvShape part{n, shape.heads, shape.head_dim};
  if (key) {
    switch (s.k_rotation) {
      case KeyRotation::None: break;
      case KeyRotation::GroupedHadamard: return inverse_rotate_k(rows, part, rp);
      case KeyRotation::PerHeadHadamard: return rotate_v(rows, part);
    }
  } else if (s.v_hadamard) {
    return rotate_v(rows, part);
  }
  return {rows.begin(), rows.end()};
}

// One quantized block of n rows (rotated basis) with KVQuant's dense-and-sparse outliers: per
// quantization group, the ceil(fraction * size) largest |x| (ties: earlier element) are kept in
// fp16 and set to 0 in the dense part before min/max (KVQuant's D + S decomposition).
struct Block {
  Quantized q;
  std::vector<int32_t> outlier_index;  // flat into [n, C], ascending
  std::vector<uint16_t> outlier_value;
  std::vector<float> stored;  // dequantized dense part with outliers restored
};

Block quantize_block(std::vector<float> x, int64_t n, int64_t channels, const QuantParams& qp,
                     double fraction, const std::string& what) {
  Block b;
  if (fraction > 0.0) {
    const GroupLayout layout = group_layout(n, channels, qp);
    std::vector<std::pair<int64_t, uint16_t>> found;
    std::vector<int64_t> members;
    for (int64_t g = 0; g < layout.group_count; ++g) {
      const int64_t size = layout.group_size(g), first = layout.first_element(g);
      const int64_t stride = layout.element_stride();
      // 1e-9 keeps fraction * size from rounding just above an integer (0.01 * 300).
      const auto count = std::min<int64_t>(
          size, static_cast<int64_t>(std::ceil(fraction * static_cast<double>(size) - 1e-9)));
      members.resize(static_cast<size_t>(size));
      for (int64_t e = 0; e < size; ++e) members[static_cast<size_t>(e)] = first + e * stride;
      std::partial_sort(members.begin(), members.begin() + count, members.end(),
                        [&](int64_t a, int64_t c) {
                          const float fa = std::fabs(x[static_cast<size_t>(a)]);
                          const float fc = std::fabs(x[static_cast<size_t>(c)]);
                          return fa != fc ? fa > fc : a < c;
                        });
      for (int64_t e = 0; e < count; ++e) {
        const int64_t at = members[static_cast<size_t>(e)];
        found.emplace_back(at, to_half_checked(x[static_cast<size_t>(at)], what + " outlier", at));
      }
    }
    std::sort(found.begin(), found.end());
    for (const auto& [at, value] : found) {
      b.outlier_index.push_back(static_cast<int32_t>(at));
      b.outlier_value.push_back(value);
      x[static_cast<size_t>(at)] = 0.0f;
    }
  }
  b.q = quantize(x, n, channels, qp, what);
  b.stored = dequantize(b.q);
  for (size_t i = 0; i < b.outlier_index.size(); ++i)
    b.stored[static_cast<size_t>(b.outlier_index[i])] = half_to_float(b.outlier_value[i]);
  return b;
}

std::vector<float> gather_rows(std::span<const float> x, std::span<const int32_t> tokens,
                               int64_t channels) {
  std::vector<float> out(tokens.size() * static_cast<size_t>(channels));
  for (size_t r = 0; r < tokens.size(); ++r)
    std::copy_n(x.begin() + tokens[r] * channels, channels,
                out.begin() + static_cast<int64_t>(r) * channels);
  return out;
}

void add_block_storage(StorageBits& bits, const Quantized& q, size_t outliers) {
  bits.codes += static_cast<int64_t>(q.codes.size()) * 8;
  bits.scales += static_cast<int64_t>(q.scale.size()) * kHalfBits;
  bits.zeros += q.params.zero_point == ZeroPoint::Float
                    ? static_cast<int64_t>(q.zero.size()) * kHalfBits
                    : static_cast<int64_t>(q.zero_int.size()) * 8;
  bits.outliers += static_cast<int64_t>(outliers) * (kHalfBits + kIndexBits);
}

struct PartSpec {
  std::vector<int32_t> tokens;  // ascending
  int bits = 0;
};

// Whole-layer pipeline for one of K or V: rotate all rows, quantize each part's rows as one
// block, keep `kept` rows in fp16 (original basis).
AppliedTensor apply_stream(bool key, std::span<const float> original, const KvShape& shape,
                           const Setup& s, const RotationParams& rp,
                           const std::vector<int32_t>& kept, const std::vector<PartSpec>& parts,
                           const std::string& what) {
  AppliedTensor out;
  const int64_t channels = shape.channels();
  out.storage.elements = shape.tokens * channels;
  bool any = false;
  for (const PartSpec& p : parts) any = any || !p.tokens.empty();
  std::vector<float> rotated;
  if (any) rotated = named(what, [&] { return rotate_rows(key, s, rp, original, shape.tokens, shape); });
  std::vector<std::pair<int64_t, uint16_t>> outliers;
  for (const PartSpec& p : parts) {
    if (p.tokens.empty()) continue;
    QuantParams qp = key ? s.kq : s.vq;
    qp.bits = p.bits;
    const auto n = static_cast<int64_t>(p.tokens.size());
    Block b =
        quantize_block(gather_rows(rotated, p.tokens, channels), n, channels, qp, s.outliers, what);
    add_block_storage(out.storage, b.q, b.outlier_index.size());
    for (size_t i = 0; i < b.outlier_index.size(); ++i) {
      const int64_t r = b.outlier_index[i] / channels, c = b.outlier_index[i] % channels;
      outliers.emplace_back(p.tokens[static_cast<size_t>(r)] * channels + c, b.outlier_value[i]);
    }
    out.parts.push_back({p.tokens, std::move(b.q)});
  }
  std::sort(outliers.begin(), outliers.end());
  for (const auto& [at, value] : outliers) {
    out.outliers.index.push_back(static_cast<int32_t>(at));
    out.outliers.value.push_back(value);
  }
  out.kept = kept;
  for (int32_t t : kept)
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t at = t * channels + c;
      out.kept_values.push_back(to_half_checked(original[static_cast<size_t>(at)], what, at));
    }
  out.storage.kept = static_cast<int64_t>(kept.size()) * (channels * kHalfBits + kIndexBits);
  if (s.method == Method::AkvqVl) out.storage.indices = shape.tokens * 8;
  return out;
}

std::vector<uint8_t> flags(const std::vector<int32_t>& tokens, int64_t count) {
  std::vector<uint8_t> f(static_cast<size_t>(count), 0);
  for (int32_t t : tokens) f[static_cast<size_t>(t)] = 1;
  return f;
}

std::vector<uint16_t> kept_rows_full(const AppliedTensor& a, int64_t tokens, int64_t channels) {
  std::vector<uint16_t> rows;
  if (a.kept.empty()) return rows;
  rows.assign(static_cast<size_t>(tokens * channels), 0);
  for (size_t i = 0; i < a.kept.size(); ++i)
    std::copy_n(a.kept_values.begin() + static_cast<int64_t>(i) * channels, channels,
                rows.begin() + a.kept[i] * channels);
  return rows;
}

void check_tokens(const std::vector<int32_t>& tokens, int64_t count, const std::string& what) {
  for (int32_t t : tokens)
    if (t < 0 || t >= count)
      throw Error(what + ": token " + std::to_string(t) + " is outside [0, " +
                  std::to_string(count) + ")");
}

}  // namespace

Method parse_method(const std::string& name) {
  std::string known;
  for (const MethodName& m : kMethods) {
    if (name == m.name) return m.method;
    known += (known.empty() ? "" : ", ") + std::string(m.name);
  }
  throw Error("unknown method '" + name + "' (known: " + known + ")");
}

const char* method_name(Method method) {
  for (const MethodName& m : kMethods)
    if (m.method == method) return m.name;
  return "?";
}

bool method_uses_pre_rope_k(Method method) {
  return method == Method::KvQuant || method == Method::KvSinkKvQuant || method == Method::RotateKv;
}

double StorageBits::per_element() const {
  if (elements <= 0) throw Error("bits per element: no elements");
  return static_cast<double>(total()) / static_cast<double>(elements);
}

Calibration calibrate(const std::vector<LayerTensors>& layers, const MethodParams& params) {
  method_setup(params);
  Calibration out;
  if (layers.empty()) throw Error("calibrate: no layers");
  const KvShape& shape = layers[0].shape;
  if (params.method == Method::RotateKv) {
    const int64_t n =
        std::max<int64_t>(1, static_cast<int64_t>(std::floor(params.calibration_fraction *
                                                             static_cast<double>(shape.tokens))));
    out.perm_calibration_tokens = n;
    for (size_t l = 0; l < layers.size(); ++l) {
      const LayerTensors& t = layers[l];
      const std::string name = "layers." + std::to_string(l);
      check_kv(t.k_pre_rope, t.shape, name + ".k_pre_rope");
      check_rotation_shape(t.shape, params.head_group);
      const KvShape head{n, t.shape.heads, t.shape.head_dim};
      const std::vector<float> rotated = named(name + ".k_pre_rope", [&] {
        return rotate_k(t.k_pre_rope.subspan(0, static_cast<size_t>(n * t.shape.channels())),
                        head, RotationParams{params.head_group, {}});
      });
      std::vector<int32_t> perm(static_cast<size_t>(t.shape.channels()));
      std::iota(perm.begin(), perm.end(), 0);
      out.k_perm.push_back(params.reorder ? calibrate_permutation(rotated, n, t.shape.channels())
                                          : std::move(perm));
      if (t.hidden_in.empty()) throw Error(name + ".hidden_in is missing (rotatekv pivots)");
      out.pivots.push_back(pivot_tokens(t.hidden_in, t.shape.tokens, t.hidden_size, params.pivot));
    }
  }
  if (params.method == Method::KvSinkKvQuant) {
    std::vector<std::span<const float>> hidden;
    for (size_t l = 0; l < layers.size(); ++l) {
      if (layers[l].hidden_in.empty() || layers[l].hidden_size != layers[0].hidden_size ||
          layers[l].shape.tokens != shape.tokens)
        throw Error("layers." + std::to_string(l) +
                    ".hidden_in is missing or differs in shape (KVSink calibration)");
      hidden.push_back(layers[l].hidden_in);
    }
    out.kvsink = calibrate_kvsink(hidden, shape.tokens, layers[0].hidden_size, params.kvsink);
    if (out.kvsink.layer >= 0)
      out.kvsink_sinks = predict_kvsink(hidden[static_cast<size_t>(out.kvsink.layer)], shape.tokens,
                                        layers[0].hidden_size, out.kvsink, params.kvsink);
  }
  return out;
}

AppliedLayer apply_method(const LayerTensors& tensors, int64_t layer, int64_t layers,
                          const Calibration& calibration, const MethodParams& params) {
  const Setup s = method_setup(params);
  const KvShape& shape = tensors.shape;
  const std::string name = "layers." + std::to_string(layer);
  if (layers < 1 || layer < 0 || layer >= layers)
    throw Error("apply_method: layer " + std::to_string(layer) + " outside [0, " +
                std::to_string(layers) + ")");
  const std::span<const float> k = s.k_pre_rope ? tensors.k_pre_rope : tensors.k;
  const std::string k_name = name + (s.k_pre_rope ? ".k_pre_rope" : ".k");
  check_kv(k, shape, k_name);
  check_kv(tensors.v, shape, name + ".v");
  const int64_t T = shape.tokens, C = shape.channels();
  if (T * C > std::numeric_limits<int32_t>::max())
    throw Error(name + ": " + std::to_string(T * C) + " elements exceed int32 flat indices");

  AppliedLayer out;
  DecodeCache& cache = out.cache;
  cache.shape = shape;
  cache.k_pre_rope = s.k_pre_rope;
  cache.rope_theta = params.rope_theta;
  cache.k_rotation = s.k_rotation;
  cache.v_per_head_hadamard = s.v_hadamard;

  if (params.method == Method::Fp32) {
    cache.k_f32.assign(k.begin(), k.end());
    cache.v_f32.assign(tensors.v.begin(), tensors.v.end());
    for (AppliedTensor* a : {&out.k, &out.v}) {
      a->storage.elements = T * C;
      a->storage.fp32 = T * C * 32;
    }
    out.k.dequant = cache.k_f32;
    out.v.dequant = cache.v_f32;
    return out;
  }

  // Sinks kept in fp16 in K and V (docs/spec.md §4, §8).
  std::vector<int32_t> sinks;
  switch (params.method) {
    case Method::KvQuant: sinks = pfn_sinks(T, params.first_tokens); break;
    case Method::KvSinkKvQuant:
      sinks = calibration.kvsink_sinks;
      check_tokens(sinks, T, name + " KVSink sinks");
      break;
    case Method::RotateKv:
      if (static_cast<int64_t>(calibration.pivots.size()) <= layer ||
          static_cast<int64_t>(calibration.k_perm.size()) <= layer)
        throw Error(name + ": rotatekv calibration has no entry for this layer");
      sinks = calibration.pivots[static_cast<size_t>(layer)];
      check_tokens(sinks, T, name + " pivot tokens");
      cache.k_rotation_params = {params.head_group, calibration.k_perm[static_cast<size_t>(layer)]};
      break;
    default: break;
  }
  std::vector<uint8_t> sink = flags(sinks, T);
  const int64_t window_start = std::max<int64_t>(0, T - s.window);
  std::vector<int32_t> v_kept, v_quant, k_kept, k_quant;
  for (int64_t t = 0; t < T; ++t) {
    const bool keep = sink[static_cast<size_t>(t)] || t >= window_start;
    (keep ? v_kept : v_quant).push_back(static_cast<int32_t>(t));
  }
  k_kept = v_kept;
  k_quant = v_quant;
  if (s.k_whole_groups) {
    // KIVI: K tokens outside the window stay fp16 until their group of G is complete.
    const auto whole =
        static_cast<size_t>((static_cast<int64_t>(k_quant.size()) / params.group) * params.group);
    k_kept.insert(k_kept.end(), k_quant.begin() + static_cast<int64_t>(whole), k_quant.end());
    std::sort(k_kept.begin(), k_kept.end());
    k_quant.resize(whole);
  }

  std::vector<PartSpec> k_parts{{k_quant, params.bits}}, v_parts{{v_quant, params.bits}};
  if (params.method == Method::AkvqVl) {
    std::vector<double> received;
    if (layer_pattern(layer, layers, params.allocation) == AttentionPattern::Psa) {
      if (tensors.q.empty()) throw Error(name + ".q is missing (akvq-vl PSA layer)");
      received =
          received_attention(tensors.q, tensors.k, T, tensors.q_heads, shape.heads, shape.head_dim);
    }
    const BitAllocation alloc =
        allocate_bits(layer, layers, tensors.modality, received, T, params.allocation);
    for (auto* parts : {&k_parts, &v_parts}) {
      PartSpec lo{{}, params.bits}, hi{{}, s.bits_hi};
      for (int32_t t : (*parts)[0].tokens) {
        const bool is_hi = std::binary_search(alloc.salient.begin(), alloc.salient.end(), t);
        (is_hi ? hi : lo).tokens.push_back(t);
      }
      *parts = {lo, hi};
    }
  }

  out.k = apply_stream(true, k, shape, s, cache.k_rotation_params, k_kept, k_parts, k_name);
  out.v = apply_stream(false, tensors.v, shape, s, {}, v_kept, v_parts, name + ".v");
  for (const auto& p : out.k.parts) cache.k_parts.push_back(p);
  for (const auto& p : out.v.parts) cache.v_parts.push_back(p);
  cache.k_outliers = out.k.outliers;
  cache.v_outliers = out.v.outliers;
  cache.kept = flags(k_kept, T);
  if (k_kept != v_kept) cache.v_kept = flags(v_kept, T);
  cache.k_fp16 = kept_rows_full(out.k, T, C);
  cache.v_fp16 = kept_rows_full(out.v, T, C);
  out.k.dequant = reconstruct_keys(cache);
  out.v.dequant = reconstruct_values(cache);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Incremental cache.

struct IncrementalCache::State {
  struct Stream {
    bool key = false;
    std::vector<float> original;   // [size, C] quantizer-input basis (pre-RoPE K when pre-RoPE)
    std::vector<float> recon;      // [size, C]
    std::vector<int32_t> pending;  // tokens stored fp16 until quantized, ascending
    size_t head = 0;               // pending[head..] not yet quantized
    int64_t quantized = 0;         // rows quantized so far
    StorageBits bits;
  };
  MethodParams params;
  Setup setup;
  KvShape shape;
  int64_t channels = 0, layer = 0, layers = 0;
  LayerCalibration calib;
  RotationParams rp;
  AttentionPattern pattern = AttentionPattern::Tsa;
  int64_t size = 0;
  std::vector<int64_t> positions;
  std::vector<uint8_t> sink, salient;
  Stream k, v;
  std::vector<std::pair<float, int32_t>> top;  // rotatekv online top-k (|h| desc, token)
  std::vector<float> absmax;                   // rotatekv pivot_requires_massive

  bool decide(const TokenRows& rows);
  void store_row(Stream& st, std::span<const float> row, int64_t t, const std::string& what);
  void quantize_tokens(Stream& st, const std::vector<int32_t>& tokens, int bits);
  void flush(Stream& st);
  StorageBits storage(const Stream& st) const;
};

bool IncrementalCache::State::decide(const TokenRows& rows) {
  if (rows.sink == 0 || rows.sink == 1) return rows.sink == 1;
  if (rows.sink != -1) throw Error("incremental cache: sink must be -1, 0 or 1");
  const int64_t t = size;
  switch (params.method) {
    case Method::KvQuant: return t < params.first_tokens;
    case Method::KvSinkKvQuant:
      if (calib.kvsink.layer != layer) return false;
      if (rows.hidden_in.empty())
        throw Error("incremental cache: KVSink layer " + std::to_string(layer) +
                    " needs hidden_in");
      return predict_kvsink_token(rows.hidden_in, calib.kvsink, params.kvsink);
    case Method::RotateKv: {
      if (rows.hidden_in.empty())
        throw Error("incremental cache: rotatekv online pivots need hidden_in (or pass sink)");
      require_finite(rows.hidden_in, "incremental cache hidden_in");
      // Online pivot rule: this token is kept when one of its |h| enters the running top-k of
      // the layer; earlier elements win ties (lower flat index, docs/spec.md §4).
      const auto k = static_cast<size_t>(params.pivot.top_k);
      float a = 0.0f;
      for (float h : rows.hidden_in) {
        const float m = std::fabs(h);
        a = std::max(a, m);
        if (k == 0 || (top.size() == k && m <= top.back().first)) continue;
        auto at = std::upper_bound(
            top.begin(), top.end(), m,
            [](float x, const std::pair<float, int32_t>& e) { return x > e.first; });
        top.insert(at, {m, static_cast<int32_t>(t)});
        if (top.size() > k) top.pop_back();
      }
      absmax.push_back(a);
      bool pivot = false;
      for (const auto& e : top) pivot = pivot || e.second == t;
      if (pivot && params.pivot.pivot_requires_massive) {
        // The channel rule needs every earlier row's channels: whole-layer apply only.
        if (params.pivot.massive.rule != MassiveRule::Token)
          throw Error("incremental cache: pivot_requires_massive supports the token rule only");
        const float median = median_floor(absmax);
        pivot = a >= params.pivot.massive.tau_abs && a >= params.pivot.massive.tau_rel * median;
      }
      return pivot;
    }
    case Method::AkvqVl:
      if (rows.modality > 1) throw Error("incremental cache: modality must be 0 or 1");
      return pattern == AttentionPattern::Tsa && rows.modality == 0;
    default: return false;
  }
}

void IncrementalCache::State::store_row(Stream& st, std::span<const float> row, int64_t t,
                                        const std::string& what) {
  if (static_cast<int64_t>(row.size()) != channels)
    throw Error("incremental cache: " + what + " row has " + std::to_string(row.size()) +
                " values, H_kv * d = " + std::to_string(channels));
  require_finite(row, "incremental cache " + what);
  st.original.insert(st.original.end(), row.begin(), row.end());
  st.recon.resize(st.original.size());
  float* out = st.recon.data() + t * channels;
  if (params.method == Method::Fp32) {
    std::copy(row.begin(), row.end(), out);
    return;
  }
  // fp16 until quantized (or for good, for sinks).
  for (int64_t c = 0; c < channels; ++c)
    out[c] =
        half_to_float(to_half_checked(row[static_cast<size_t>(c)], "incremental cache " + what, c));
  if (st.key && setup.k_pre_rope)
    apply_rope({out, static_cast<size_t>(channels)}, shape.heads, shape.head_dim, positions.back(),
               params.rope_theta);
}

void IncrementalCache::State::quantize_tokens(Stream& st, const std::vector<int32_t>& tokens,
                                              int bits) {
  const auto n = static_cast<int64_t>(tokens.size());
  QuantParams qp = st.key ? setup.kq : setup.vq;
  qp.bits = bits;
  const std::vector<float> rotated =
      rotate_rows(st.key, setup, rp, gather_rows(st.original, tokens, channels), n, shape);
  const Block b = quantize_block(rotated, n, channels, qp, setup.outliers,
                                 st.key ? "incremental cache k" : "incremental cache v");
  add_block_storage(st.bits, b.q, b.outlier_index.size());
  const std::vector<float> rows = inverse_rotate_rows(st.key, setup, rp, b.stored, n, shape);
  for (int64_t r = 0; r < n; ++r) {
    const int32_t t = tokens[static_cast<size_t>(r)];
    float* out = st.recon.data() + t * channels;
    std::copy_n(rows.begin() + r * channels, channels, out);
    if (st.key && setup.k_pre_rope)
      apply_rope({out, static_cast<size_t>(channels)}, shape.heads, shape.head_dim,
                 positions[static_cast<size_t>(t)], params.rope_theta);
  }
  st.quantized += n;
}

void IncrementalCache::State::flush(Stream& st) {
  const int64_t limit = size - setup.window;  // tokens < limit are outside the window
  const bool per_channel = (st.key ? setup.kq : setup.vq).axis == Axis::Channel;
  if (per_channel) {
    size_t ready = st.head;
    while (ready < st.pending.size() && st.pending[ready] < limit) ++ready;
    while (static_cast<int64_t>(ready - st.head) >= params.group) {
      const std::vector<int32_t> block(
          st.pending.begin() + static_cast<int64_t>(st.head),
          st.pending.begin() + static_cast<int64_t>(st.head) + params.group);
      quantize_tokens(st, block, params.bits);
      st.head += static_cast<size_t>(params.group);
    }
    return;
  }
  while (st.head < st.pending.size() && st.pending[st.head] < limit) {
    const int32_t t = st.pending[st.head++];
    const bool hi = setup.method == Method::AkvqVl && salient[static_cast<size_t>(t)];
    quantize_tokens(st, {t}, hi ? setup.bits_hi : params.bits);
  }
}

StorageBits IncrementalCache::State::storage(const Stream& st) const {
  StorageBits b = st.bits;
  b.elements = size * channels;
  if (params.method == Method::Fp32) {
    b.fp32 = size * channels * 32;
    return b;
  }
  b.kept = (size - st.quantized) * (channels * kHalfBits + kIndexBits);
  if (params.method == Method::AkvqVl) b.indices = size * 8;
  return b;
}

IncrementalCache::IncrementalCache(const MethodParams& params, int64_t kv_heads, int64_t head_dim,
                                   int64_t layer, int64_t layers, LayerCalibration calibration)
    : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.params = params;
  s.setup = method_setup(params);
  if (kv_heads < 1 || head_dim < 1)
    throw Error("incremental cache: kv_heads and head_dim must be positive");
  if (layers < 1 || layer < 0 || layer >= layers)
    throw Error("incremental cache: layer " + std::to_string(layer) + " outside [0, " +
                std::to_string(layers) + ")");
  s.shape = {0, kv_heads, head_dim};
  s.channels = kv_heads * head_dim;
  s.layer = layer;
  s.layers = layers;
  s.calib = std::move(calibration);
  s.rp = {params.head_group, s.calib.k_perm};
  if (params.method == Method::RotateKv) {
    check_rotation_shape(s.shape, params.head_group);
    if (!s.rp.perm.empty() && static_cast<int64_t>(s.rp.perm.size()) != s.channels)
      throw Error("incremental cache: rotatekv permutation has " +
                  std::to_string(s.rp.perm.size()) + " entries for " + std::to_string(s.channels) +
                  " channels");
  }
  if (params.method == Method::AkvqVl) s.pattern = layer_pattern(layer, layers, params.allocation);
  s.k.key = true;
}

IncrementalCache::~IncrementalCache() = default;
IncrementalCache::IncrementalCache(IncrementalCache&&) noexcept = default;
IncrementalCache& IncrementalCache::operator=(IncrementalCache&&) noexcept = default;

void IncrementalCache::append(const TokenRows& rows) {
  State& s = *state_;
  if (rows.position < 0) throw Error("incremental cache: negative position");
  if (s.size >= std::numeric_limits<int32_t>::max() / std::max<int64_t>(s.channels, 1))
    throw Error("incremental cache: too many tokens for int32 flat indices");
  const std::span<const float> k = s.setup.k_pre_rope ? rows.k_pre_rope : rows.k;
  // Validate everything before changing any state.
  const std::string k_what = s.setup.k_pre_rope ? "k_pre_rope" : "k";
  for (const auto& [row, what] : {std::pair{k, k_what}, std::pair{rows.v, std::string("v")}}) {
    if (static_cast<int64_t>(row.size()) != s.channels)
      throw Error("incremental cache: " + what + " row has " + std::to_string(row.size()) +
                  " values, H_kv * d = " + std::to_string(s.channels));
    require_finite(row, "incremental cache " + what);
    if (s.params.method != Method::Fp32)
      for (size_t c = 0; c < row.size(); ++c)
        to_half_checked(row[c], "incremental cache " + what, c);
  }
  const bool flag = s.decide(rows);
  const int64_t t = s.size;
  s.positions.push_back(rows.position);
  s.sink.push_back(flag && s.params.method != Method::AkvqVl);
  s.salient.push_back(flag && s.params.method == Method::AkvqVl);
  s.size = t + 1;
  s.store_row(s.k, k, t, k_what);
  s.store_row(s.v, rows.v, t, "v");
  if (s.params.method == Method::Fp32) return;
  for (State::Stream* st : {&s.k, &s.v}) {
    if (!s.sink.back()) st->pending.push_back(static_cast<int32_t>(t));
    s.flush(*st);
  }
}

int64_t IncrementalCache::size() const {
  return state_->size;
}
std::span<const float> IncrementalCache::keys() const {
  return state_->k.recon;
}
std::span<const float> IncrementalCache::values() const {
  return state_->v.recon;
}
bool IncrementalCache::kept(int64_t token) const {
  if (token < 0 || token >= state_->size)
    throw Error("incremental cache: token " + std::to_string(token) + " not in the cache");
  return state_->sink[static_cast<size_t>(token)];
}
StorageBits IncrementalCache::k_storage() const {
  return state_->storage(state_->k);
}
StorageBits IncrementalCache::v_storage() const {
  return state_->storage(state_->v);
}

}  // namespace kvq
