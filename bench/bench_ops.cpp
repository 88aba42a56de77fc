// Google Benchmark registrations for `kvq bench`: synthetic inputs per case, one benchmark per
// (case, backend), plus the memcpy baseline of the same bytes.
#include "bench/bench_ops.h"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <regex>

#include "reference/error.h"
#include "reference/half.h"
#include "reference/quantize.h"
#include "reference/rotation.h"

namespace kvq {

namespace {

// ---- expanded scenario parameters -> BenchSpec ---------------------------------------------

int64_t as_int(const nlohmann::json& j, const std::string& at) {
  if (!j.is_number_integer()) throw Error(at + ": expected an integer");
  return j.get<int64_t>();
}

BenchSpec make_spec(const nlohmann::json& p, const std::string& at) {
  BenchSpec s;
  s.op = p.at("op").get<std::string>();
  for (const auto& [key, v] : p.items()) {
    const std::string k = at + " key '" + key + "'";
    if (key == "tokens")
      s.tokens = as_int(v, k);
    else if (key == "heads")
      s.heads = as_int(v, k);
    else if (key == "head_dim")
      s.head_dim = as_int(v, k);
    else if (key == "n")
      s.n = as_int(v, k);
    else if (key == "hidden")
      s.hidden = as_int(v, k);
    else if (key == "experts")
      s.experts = as_int(v, k);
    else if (key == "top_k")
      s.top_k = as_int(v, k);
    else if (key == "q_heads")
      s.q_heads = as_int(v, k);
    else if (key == "seed")
      s.seed = static_cast<uint32_t>(as_int(v, k));
    else if (key == "repetitions")
      s.repetitions = static_cast<int>(as_int(v, k));
    else if (key == "bits")
      s.quant.bits = static_cast<int>(as_int(v, k));
    else if (key == "group")
      s.quant.group = as_int(v, k);
    else if (key == "head_group")
      s.head_group = static_cast<int>(as_int(v, k));
    else if (key == "clip")
      s.quant.clip = v.get<float>();
    else if (key == "reorder")
      s.reorder = v.get<bool>();
    else if (key == "axis") {
      const std::string a = v.get<std::string>();
      if (a != "token" && a != "channel") throw Error(k + ": axis must be token or channel");
      s.quant.axis = a == "token" ? Axis::Token : Axis::Channel;
    } else if (key == "zero_point") {
      const std::string z = v.get<std::string>();
      if (z != "float" && z != "int") throw Error(k + ": zero_point must be float or int");
      s.quant.zero_point = z == "float" ? ZeroPoint::Float : ZeroPoint::Int;
    } else if (key == "dtype") {
      const std::string d = v.get<std::string>();
      if (d != "f32" && d != "f16" && d != "bf16") throw Error(k + ": dtype must be f32|f16|bf16");
      s.dtype = d == "f32" ? DType::F32 : d == "f16" ? DType::F16 : DType::BF16;
    } else if (key == "rotation") {
      const std::string r = v.get<std::string>();
      if (r == "none")
        s.rotation = AppendRotation::None;
      else if (r == "key_grouped")
        s.rotation = AppendRotation::KeyGrouped;
      else if (r == "per_head")
        s.rotation = AppendRotation::PerHead;
      else
        throw Error(k + ": rotation must be none|key_grouped|per_head");
    }
  }
  s.params_json = p.dump();
  return s;
}

// ---- synthetic inputs --------------------------------------------------------------------

std::vector<float> synthetic(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(rows * cols));
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t c = 0; c < cols; ++c)
      x[static_cast<size_t>(t * cols + c)] = normal(rng) * (c % 32 == 3 ? 30.0f : 1.0f);
  return x;
}

double quantized_bytes(const Quantized& q) {
  return static_cast<double>(q.codes.size() + 2 * q.scale.size() + 2 * q.zero.size() +
                             q.zero_int.size());
}

// Everything one case needs, built once and shared by its backends' benchmarks.
struct Prepared {
  BenchSpec spec;
  KvShape shape;
  std::vector<float> x;
  mutable std::vector<float> work;  // fwht transforms this in place
  Tensor kv;
  RotationParams rotation;
  Quantized q;
  std::vector<int32_t> ids, argmax;
  DecodeCache cache;
  double bytes_read = 0.0, bytes_written = 0.0;
  std::vector<std::byte> copy_src;
  mutable std::vector<std::byte> copy_dst;
};

std::shared_ptr<Prepared> prepare(const BenchSpec& s) {
  auto p = std::make_shared<Prepared>();
  p->spec = s;
  p->shape = {s.tokens, s.heads, s.head_dim};
  const int64_t channels = p->shape.channels();
  const double elems = static_cast<double>(s.tokens * channels);
  p->rotation.head_group = s.head_group;
  const Op op = [&] {
    for (int i = 0; i <= static_cast<int>(Op::AttentionDecode); ++i)
      if (s.op == op_name(static_cast<Op>(i))) return static_cast<Op>(i);
    throw Error("kvq bench: case '" + s.name + "': unknown op '" + s.op + "'");
  }();
  switch (op) {
    case Op::Fwht: {
      const int64_t n = s.n > 0 ? s.n : channels;
      p->x = synthetic(s.tokens, n, s.seed);
      p->work = p->x;
      p->bytes_read = p->bytes_written = 4.0 * static_cast<double>(p->x.size());
      break;
    }
    case Op::Reorder:
    case Op::RotateK:
    case Op::RotateV:
      p->x = synthetic(s.tokens, channels, s.seed);
      if (s.reorder || op == Op::Reorder) {
        p->rotation.perm.resize(static_cast<size_t>(channels));
        std::iota(p->rotation.perm.begin(), p->rotation.perm.end(), 0);
        std::shuffle(p->rotation.perm.begin(), p->rotation.perm.end(), std::mt19937(s.seed));
      }
      p->bytes_read = p->bytes_written = 4.0 * elems;
      break;
    case Op::Quantize:
    case Op::Dequantize:
      p->x = synthetic(s.tokens, channels, s.seed);
      p->q = quantize(p->x, s.tokens, channels, s.quant);
      p->bytes_read = op == Op::Quantize ? 4.0 * elems : quantized_bytes(p->q);
      p->bytes_written = op == Op::Quantize ? quantized_bytes(p->q) : 4.0 * elems;
      break;
    case Op::RotateQuantize: {
      const std::vector<float> x = synthetic(s.tokens, channels, s.seed);
      p->kv = Tensor(s.dtype, {s.tokens, s.heads, s.head_dim});
      for (size_t i = 0; i < x.size(); ++i) {
        if (s.dtype == DType::F32) p->kv.data<float>()[i] = x[i];
        if (s.dtype == DType::F16) p->kv.data<uint16_t>()[i] = float_to_half(x[i]);
        if (s.dtype == DType::BF16) p->kv.data<uint16_t>()[i] = float_to_bf16(x[i]);
      }
      if (s.reorder && s.rotation == AppendRotation::KeyGrouped) {
        const std::vector<float> xr = rotate_k(x, p->shape, p->rotation);
        const int64_t calib = std::max<int64_t>(1, s.tokens / 2);  // docs/spec.md §2 default
        p->rotation.perm = calibrate_permutation(
            std::span<const float>(xr).first(static_cast<size_t>(calib * channels)), calib,
            channels);
      }
      p->bytes_read = static_cast<double>(p->kv.bytes.size());
      p->bytes_written = quantized_bytes(quantize(x, s.tokens, channels, s.quant));
      break;
    }
    case Op::TokenAbsmax:
      p->x = synthetic(s.tokens, s.hidden, s.seed);
      p->bytes_read = 4.0 * static_cast<double>(p->x.size());
      p->bytes_written = 8.0 * static_cast<double>(s.tokens);
      break;
    case Op::ExpertStatistics: {
      std::mt19937 rng(s.seed);
      const auto n = static_cast<size_t>(s.tokens * s.top_k);
      p->ids.resize(n);
      p->argmax.resize(n);
      p->x.resize(n);
      for (size_t i = 0; i < n; ++i) {
        p->ids[i] = static_cast<int32_t>(rng() % static_cast<uint32_t>(s.experts));
        p->argmax[i] = static_cast<int32_t>(rng() % 4096);
        p->x[i] = static_cast<float>(rng() % 100000) / 100.0f;
      }
      p->bytes_read = 12.0 * static_cast<double>(n);
      p->bytes_written = 12.0 * static_cast<double>(s.experts);
      break;
    }
    case Op::AttentionDecode: {
      // A 2-bit per-token cache of `tokens` positions; the query is the newest position.
      const std::vector<float> k = synthetic(s.tokens, channels, s.seed);
      const std::vector<float> v = synthetic(s.tokens, channels, s.seed + 1);
      p->cache.shape = p->shape;
      p->cache.k = quantize(k, s.tokens, channels, s.quant);
      p->cache.v = quantize(v, s.tokens, channels, s.quant);
      p->x = synthetic(1, s.q_heads * s.head_dim, s.seed + 2);
      p->bytes_read = quantized_bytes(p->cache.k) + quantized_bytes(p->cache.v) +
                      4.0 * static_cast<double>(p->x.size());
      p->bytes_written = 4.0 * static_cast<double>(p->x.size());
      break;
    }
  }
  const auto copy = static_cast<size_t>(std::max(p->bytes_read, p->bytes_written));
  p->copy_src.assign(copy, std::byte{1});
  p->copy_dst.assign(copy, std::byte{0});
  return p;
}

// One call of the case's op on backend b.
void run_once(const Prepared& p, const Backend& b) {
  const BenchSpec& s = p.spec;
  const int64_t channels = p.shape.channels();
  if (s.op == "fwht") {
    // In place on the same buffer: the normalized transform is orthonormal (docs/spec.md §1), so
    // repeated application keeps the values bounded.
    b.fwht(p.work, static_cast<int>(s.n > 0 ? s.n : channels));
    benchmark::DoNotOptimize(p.work.data());
  } else if (s.op == "reorder") {
    benchmark::DoNotOptimize(b.reorder(p.x, s.tokens, p.rotation.perm).data());
  } else if (s.op == "rotate_k") {
    benchmark::DoNotOptimize(b.rotate_k(p.x, p.shape, p.rotation).data());
  } else if (s.op == "rotate_v") {
    benchmark::DoNotOptimize(b.rotate_v(p.x, p.shape).data());
  } else if (s.op == "quantize") {
    benchmark::DoNotOptimize(b.quantize(p.x, s.tokens, channels, s.quant).codes.data());
  } else if (s.op == "dequantize") {
    benchmark::DoNotOptimize(b.dequantize(p.q).data());
  } else if (s.op == "rotate_quantize") {
    RotateQuantizeParams rq;
    rq.rotation = s.rotation;
    rq.rotation_params = p.rotation;
    rq.quant = s.quant;
    benchmark::DoNotOptimize(b.rotate_quantize(p.kv.view(), p.shape, rq).codes.data());
  } else if (s.op == "token_absmax") {
    benchmark::DoNotOptimize(b.token_absmax(p.x, s.tokens, s.hidden).absmax.data());
  } else if (s.op == "expert_statistics") {
    benchmark::DoNotOptimize(
        b.expert_statistics(p.ids, p.x, p.argmax, s.tokens, s.top_k, s.experts).data());
  } else if (s.op == "attention_decode") {
    benchmark::DoNotOptimize(b.attention_decode(p.x, s.q_heads, p.cache).data());
  }
  benchmark::ClobberMemory();
}

// The copy baseline uses the same OpenMP threads as the kernels (1 MiB chunks), so the fraction
// compares like with like on any thread count.
void parallel_copy(const Prepared& p) {
  constexpr int64_t kChunk = 1 << 20;
  const auto size = static_cast<int64_t>(p.copy_src.size());
  const int64_t chunks = (size + kChunk - 1) / kChunk;
  std::byte* dst = p.copy_dst.data();
  const std::byte* src = p.copy_src.data();
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t n = std::min(kChunk, size - c * kChunk);
    std::memcpy(dst + c * kChunk, src + c * kChunk, static_cast<size_t>(n));
  }
}

Op op_of(const std::string& name) {
  for (int i = 0; i <= static_cast<int>(Op::AttentionDecode); ++i)
    if (name == op_name(static_cast<Op>(i))) return static_cast<Op>(i);
  throw Error("kvq bench: unknown op '" + name + "'");
}

}  // namespace

BenchSpec bench_spec_from_params(const std::string& name, const nlohmann::json& params,
                                 const std::string& where) {
  if (!params.contains("op") || !params["op"].is_string())
    throw Error(where + ": [[case]] needs op");
  try {
    BenchSpec s = make_spec(params, where);
    s.name = name;
    return s;
  } catch (const nlohmann::json::exception& e) {
    throw Error(where + ": " + e.what());
  }
}

std::vector<BenchEntry> register_bench_cases(const std::vector<BenchSpec>& specs,
                                             const BenchOptions& options) {
  std::vector<BenchEntry> entries;
  const std::regex filter(options.filter.empty() ? ".*" : options.filter);
  for (const BenchSpec& spec : specs) {
    std::vector<std::string> names = !options.backends.empty() ? options.backends : spec.backends;
    if (names.empty())
      for (const BackendEntry& e : backend_registry())
        if (e.available) names.push_back(e.name);
    const Op op = op_of(spec.op);
    std::shared_ptr<Prepared> prepared;
    bool any = false;
    for (const std::string& name : names) {
      const std::string full = spec.name + "/" + name;
      if (!std::regex_search(full, filter)) continue;
      const auto entry = std::find_if(backend_registry().begin(), backend_registry().end(),
                                      [&](const BackendEntry& e) { return e.name == name; });
      if (entry == backend_registry().end() || !entry->available) {
        std::cerr << "kvq bench: " << full << ": backend not available, skipped\n";
        continue;
      }
      std::shared_ptr<Backend> backend = entry->make();
      if (!backend->supports(op)) {
        std::cerr << "kvq bench: " << full << ": " << spec.op << " unsupported, skipped\n";
        continue;
      }
      if (!prepared) prepared = prepare(spec);
      benchmark::RegisterBenchmark(full.c_str(),
                                   [prepared, backend](benchmark::State& state) {
                                     for (auto _ : state) run_once(*prepared, *backend);
                                   })
          ->Repetitions(std::max(1, spec.repetitions))
          ->UseRealTime()
          ->MinTime(options.min_time > 0 ? options.min_time : 0.5);
      entries.push_back({spec.name, name, spec.op, spec.params_json, prepared->bytes_read,
                         prepared->bytes_written, {}});
      any = true;
    }
    if (!any) continue;
    const std::string copy = spec.name + "/memcpy";
    benchmark::RegisterBenchmark(copy.c_str(),
                                 [prepared](benchmark::State& state) {
                                   for (auto _ : state) {
                                     parallel_copy(*prepared);
                                     benchmark::ClobberMemory();
                                   }
                                 })
        ->Repetitions(std::max(1, spec.repetitions))
        ->UseRealTime()
        ->MinTime(options.min_time > 0 ? options.min_time : 0.5);
    const double c = static_cast<double>(prepared->copy_src.size());
    entries.push_back({spec.name, "memcpy", "memcpy", spec.params_json, c, c, {}});
  }
  return entries;
}

}  // namespace kvq
