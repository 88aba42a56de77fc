// `kvq-bench-cuda [--db PATH] [--quick] [--filter REGEX]`: device-side benchmarks of the CUDA
// kernels (kernels.h on device buffers, no host copies), registered with Google Benchmark using
// manual time from CUDA events around each launch, and written to the results store by
// bench/sqlite_reporter as backend "cuda", each case with a device-to-device copy of the same
// bytes ("memcpy") measured in the same run, so bandwidth is also reported as a fraction of
// copy. Buffers are larger than L2 (50 MB on an H100). tools/torch_peers.py writes the PyTorch
// peers of the same cases (same names) as backend "torch".
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/cuda_error.h"
#include "backends/cuda/kernels.h"
#include "backends/reference_backend.h"
#include "bench/bench_ops.h"
#include "bench/sqlite_reporter.h"
#include "harness/store/store.h"
#include "reference/error.h"
#include "reference/fwht.h"
#include "reference/half.h"
#include "reference/quantize.h"

namespace kvq {
namespace {

using cuda::check;

struct DeviceMemory {
  void* ptr = nullptr;
  explicit DeviceMemory(size_t bytes) { check(cudaMalloc(&ptr, bytes), "cudaMalloc"); }
  ~DeviceMemory() { cudaFree(ptr); }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  template <class T> T* as() const { return static_cast<T*>(ptr); }
};

// Everything a registered benchmark needs lives until exit.
std::vector<std::unique_ptr<DeviceMemory>> g_buffers;
size_t g_allocated_bytes = 0;  // sum of the sizes asked of cudaMalloc
template <class T> T* device_alloc(size_t count) {
  g_buffers.push_back(std::make_unique<DeviceMemory>(count * sizeof(T)));
  g_allocated_bytes += count * sizeof(T);
  return g_buffers.back()->as<T>();
}

size_t device_free_bytes() {
  size_t free = 0, total = 0;
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  check(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
  return free;
}

void upload(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "upload");
}

// Fast host fill of random bytes (xorshift), so multi-GB caches take seconds.
void random_bytes(std::vector<uint8_t>& out, uint64_t seed) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    std::memcpy(out.data() + i, &s, 8);
  }
  for (; i < out.size(); ++i) out[i] = static_cast<uint8_t>(s >> (8 * (i % 8)));
}

// One launch timed with CUDA events; Google Benchmark gets the event time as manual time.
void timed(benchmark::State& state, const std::function<void()>& launch) {
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  for (int i = 0; i < 3; ++i) launch();  // warm-up
  check(cudaDeviceSynchronize(), "warm-up");
  for (auto _ : state) {
    check(cudaEventRecord(start), "cudaEventRecord");
    launch();
    check(cudaEventRecord(stop), "cudaEventRecord");
    check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0.0f;
    check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    state.SetIterationTime(static_cast<double>(ms) * 1e-3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

struct Registry {
  std::vector<BenchEntry> entries;
  std::string filter;
  int repetitions = 10;

  bool wanted(const std::string& case_name) const {
    return filter.empty() || std::regex_search(case_name, std::regex(filter));
  }

  void add(const std::string& case_name, const std::string& op, const std::string& params,
           double read, double written, std::function<void()> launch,
           std::vector<BenchEntry::Extra> extra = {}) {
    if (!wanted(case_name)) return;
    const std::string name = case_name + "/cuda";
    benchmark::RegisterBenchmark(name.c_str(), [launch](benchmark::State& s) { timed(s, launch); })
        ->UseManualTime()
        ->Repetitions(repetitions)
        ->MinTime(0.05)
        ->Unit(benchmark::kMicrosecond);
    entries.push_back({case_name, "cuda", op, params, read, written, std::move(extra)});
    // The copy baseline: cudaMemcpy of half the bytes moves the same bytes (read + write).
    const size_t half = static_cast<size_t>((read + written) / 2);
    auto* src = device_alloc<uint8_t>(half);
    auto* dst = device_alloc<uint8_t>(half);
    check(cudaMemset(src, 1, half), "cudaMemset");
    const std::string copy = case_name + "/memcpy";
    benchmark::RegisterBenchmark(copy.c_str(), [src, dst, half](benchmark::State& s) {
      timed(s, [=] { check(cudaMemcpyAsync(dst, src, half, cudaMemcpyDeviceToDevice), "copy"); });
    })
        ->UseManualTime()
        ->Repetitions(repetitions)
        ->MinTime(0.05)
        ->Unit(benchmark::kMicrosecond);
    entries.push_back({case_name, "memcpy", "memcpy", params, static_cast<double>(half),
                       static_cast<double>(half), {}});
  }
};

// The fused append path on [T, 32 heads, 128] fp16, 2-bit, G = 128, grouped FWHT (g = 4) +
// reorder, clip 0.8: checked once against the reference on its first 64 tokens.
void add_rotate_quantize(Registry& r, int64_t tokens, bool per_head) {
  const int64_t heads = 32, d = 128, cols = heads * d, n = tokens * cols;
  std::vector<uint16_t> host(static_cast<size_t>(n));
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < n; ++i)
    host[static_cast<size_t>(i)] =
        float_to_half(normal(rng) * ((i % cols) % 37 == 5 ? 20.0f : 1.0f));
  auto* kv = device_alloc<uint16_t>(static_cast<size_t>(n));
  upload(kv, host.data(), host.size() * 2);
  RotateQuantizeParams params;
  params.rotation = per_head ? AppendRotation::PerHead : AppendRotation::KeyGrouped;
  params.rotation_params.head_group = 4;
  std::vector<int32_t> perm(static_cast<size_t>(cols));
  for (int64_t i = 0; i < cols; ++i) perm[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  std::shuffle(perm.begin(), perm.end(), rng);
  if (!per_head) params.rotation_params.perm = perm;
  params.quant.bits = 2;
  params.quant.clip = 0.8f;
  const GroupLayout l = group_layout(tokens, cols, params.quant);
  cuda::DeviceQuantLayout dl;
  dl.rows = tokens;
  dl.cols = cols;
  dl.group = l.group;
  dl.groups_per_line = l.groups_per_line;
  dl.group_count = l.group_count;
  dl.bits = 2;
  dl.clip = 0.8f;
  auto* codes = device_alloc<uint8_t>(static_cast<size_t>(l.total_bytes()));
  auto* scale = device_alloc<uint16_t>(static_cast<size_t>(l.group_count));
  auto* zero = device_alloc<uint16_t>(static_cast<size_t>(l.group_count));
  auto* bad = device_alloc<int64_t>(1);
  auto* dperm = device_alloc<int32_t>(perm.size());
  upload(dperm, perm.data(), perm.size() * 4);
  cuda::FusedAppend a;
  a.input = cuda::InputType::F16;
  a.rotation = 1;
  a.fwht_n = per_head ? 128 : 512;
  a.fwht_scale = fwht_scale(a.fwht_n);
  a.perm = per_head ? nullptr : dperm;
  auto launch = [=] {
    cuda::rotate_quantize_token(kv, a, dl, codes, scale, zero, nullptr, bad, nullptr);
  };
  // Correctness of what is timed: the first 64 tokens against the reference.
  launch();
  check(cudaDeviceSynchronize(), "rotate_quantize");
  const int64_t check_tokens = 64;
  const GroupLayout cl = group_layout(check_tokens, cols, params.quant);
  const Quantized expect = reference_rotate_quantize(
      {host.data(), DType::F16, {check_tokens, heads, d}}, {check_tokens, heads, d}, params);
  std::vector<uint8_t> got(static_cast<size_t>(cl.total_bytes()));
  std::vector<uint16_t> got_scale(static_cast<size_t>(cl.group_count));
  check(cudaMemcpy(got.data(), codes, got.size(), cudaMemcpyDeviceToHost), "download");
  check(cudaMemcpy(got_scale.data(), scale, got_scale.size() * 2, cudaMemcpyDeviceToHost),
        "download");
  if (got != expect.codes || got_scale != expect.scale)
    throw Error("bench_cuda: rotate_quantize differs from the reference on the first tokens");
  const double read = static_cast<double>(n) * 2.0;
  const double written = static_cast<double>(l.total_bytes()) + 4.0 * l.group_count;
  const std::string name = std::string("rotate_quantize/") + (per_head ? "per_head" : "key_grouped") +
                           "/T" + std::to_string(tokens) + "/H32/d128/f16/b2";
  r.add(name, "rotate_quantize",
        "{\"tokens\":" + std::to_string(tokens) + ",\"heads\":32,\"head_dim\":128,\"bits\":2," +
            "\"group\":128,\"dtype\":\"f16\",\"rotation\":\"" +
            (per_head ? "per_head" : "key_grouped") + "\",\"clip\":0.8}",
        read, written, launch);
}

void add_fwht(Registry& r, int n, int64_t count) {
  std::vector<float> host(static_cast<size_t>(count));
  std::mt19937 rng(static_cast<uint32_t>(n));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : host) v = normal(rng);
  auto* x = device_alloc<float>(host.size());
  upload(x, host.data(), host.size() * 4);
  const float s = fwht_scale(n);
  // Correctness: one transform of the first block against the reference.
  std::vector<float> expect(host.begin(), host.begin() + n);
  fwht(expect, n);
  cuda::fwht(x, n, n, s, nullptr);
  std::vector<float> got(static_cast<size_t>(n));
  check(cudaMemcpy(got.data(), x, got.size() * 4, cudaMemcpyDeviceToHost), "download");
  if (std::memcmp(got.data(), expect.data(), got.size() * 4) != 0)
    throw Error("bench_cuda: fwht differs from the reference");
  r.add("fwht/n" + std::to_string(n) + "/f32/" + std::to_string(count * 4 >> 20) + "MiB", "fwht",
        "{\"n\":" + std::to_string(n) + ",\"values\":" + std::to_string(count) + "}",
        4.0 * count, 4.0 * count, [=] { cuda::fwht(x, count, n, s, nullptr); });
}

// 2-bit decode attention, B sequences x 32 heads x d 128, per-head Hadamard on K and V folded,
// 4 sink + 128 window tokens kept in fp16 (as fp32 rows in the stored basis). Also records the
// device memory of one decode step (memory.toml): peak_device_memory = the drop of
// cudaMemGetInfo's free bytes from before the case's first allocation to after its first launch
// (everything resident while it runs, allocator granularity included), device_bytes_allocated =
// the sum of its cudaMalloc sizes, kv_cache_bytes = codes + scales + zeros + kept rows + slots.
void add_attention(Registry& r, int batch, int64_t tokens) {
  const std::string name = "attention_decode/T" + std::to_string(tokens) + "/B" +
                           std::to_string(batch) + "/H32/d128/b2";
  if (!r.wanted(name)) return;  // a filtered-out case allocates nothing
  const size_t free_before = device_free_bytes();
  const size_t allocated_before = g_allocated_bytes;
  const int heads = 32, d = 128;
  const int64_t cols = static_cast<int64_t>(heads) * d;
  QuantParams qp;
  qp.bits = 2;
  const GroupLayout l = group_layout(tokens, cols, qp);
  const size_t code_bytes = static_cast<size_t>(l.total_bytes()) * batch;
  const size_t groups = static_cast<size_t>(l.group_count) * batch;
  cuda::PackedDecode p;
  p.batch = batch;
  p.tokens = tokens;
  p.heads = heads;
  p.head_dim = d;
  p.q_heads = heads;
  p.layout.rows = tokens;
  p.layout.cols = cols;
  p.layout.group = l.group;
  p.layout.groups_per_line = l.groups_per_line;
  p.layout.group_count = l.group_count;
  p.layout.bits = 2;
  p.k_hadamard = p.v_hadamard = true;
  std::vector<uint8_t> bytes(code_bytes);
  uint8_t* kc = device_alloc<uint8_t>(code_bytes);
  uint8_t* vc = device_alloc<uint8_t>(code_bytes);
  random_bytes(bytes, 1);
  upload(kc, bytes.data(), code_bytes);
  random_bytes(bytes, 2);
  upload(vc, bytes.data(), code_bytes);
  std::vector<uint16_t> sc(groups), ze(groups);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(0.5f, 1.5f);
  for (size_t i = 0; i < groups; ++i) {
    sc[i] = float_to_half(0.05f * u(rng));
    ze[i] = float_to_half(-0.075f * u(rng));
  }
  uint16_t* ks = device_alloc<uint16_t>(groups);
  uint16_t* kz = device_alloc<uint16_t>(groups);
  uint16_t* vs = device_alloc<uint16_t>(groups);
  uint16_t* vz = device_alloc<uint16_t>(groups);
  upload(ks, sc.data(), groups * 2);
  upload(kz, ze.data(), groups * 2);
  upload(vs, sc.data(), groups * 2);
  upload(vz, ze.data(), groups * 2);
  const int64_t kept = 4 + 128;
  std::vector<int32_t> slot(static_cast<size_t>(tokens) * batch, -1);
  for (int b = 0; b < batch; ++b) {
    int32_t next = 0;
    for (int64_t t = 0; t < tokens; ++t)
      if (t < 4 || t >= tokens - 128) slot[static_cast<size_t>(b * tokens + t)] = next++;
  }
  int32_t* dslot = device_alloc<int32_t>(slot.size());
  upload(dslot, slot.data(), slot.size() * 4);
  std::vector<float> rows(static_cast<size_t>(kept * cols) * batch);
  std::normal_distribution<float> normal(0.0f, 0.3f);
  for (float& v : rows) v = normal(rng);
  float* krows = device_alloc<float>(rows.size());
  float* vrows = device_alloc<float>(rows.size());
  upload(krows, rows.data(), rows.size() * 4);
  upload(vrows, rows.data(), rows.size() * 4);
  std::vector<float> q(static_cast<size_t>(batch) * heads * d);
  for (float& v : q) v = normal(rng) * 3.0f;
  float* dq = device_alloc<float>(q.size());
  float* out = device_alloc<float>(q.size());
  upload(dq, q.data(), q.size() * 4);
  void* scratch = device_alloc<uint8_t>(
      static_cast<size_t>(cuda::decode_scratch_bytes(batch, heads, d, tokens)));
  p.k_codes = kc;
  p.v_codes = vc;
  p.k_scale = ks;
  p.k_zero = kz;
  p.v_scale = vs;
  p.v_zero = vz;
  p.k_slot = p.v_slot = dslot;
  p.k_kept = krows;
  p.v_kept = vrows;
  p.kept_stride = kept;
  if (!cuda::packed_decode_supported(p)) throw Error("bench_cuda: packed decode unsupported");
  const double cache_bytes = 2.0 * static_cast<double>(code_bytes) +
                             8.0 * static_cast<double>(groups) +
                             2.0 * 4.0 * static_cast<double>(rows.size()) +
                             4.0 * static_cast<double>(slot.size());
  const double read = cache_bytes + 4.0 * q.size();
  const double written = 4.0 * q.size();
  const auto launch = [=] { cuda::attention_decode_packed(p, dq, out, scratch, nullptr); };
  launch();
  const size_t free_after = device_free_bytes();
  const size_t peak = free_before > free_after ? free_before - free_after : 0;
  std::vector<BenchEntry::Extra> memory = {
      {"peak_device_memory", static_cast<double>(peak), "bytes"},
      {"device_bytes_allocated", static_cast<double>(g_allocated_bytes - allocated_before),
       "bytes"},
      {"kv_cache_bytes", cache_bytes, "bytes"}};
  r.add(name, "attention_decode",
        "{\"tokens\":" + std::to_string(tokens) + ",\"batch\":" + std::to_string(batch) +
            ",\"heads\":32,\"q_heads\":32,\"head_dim\":128,\"bits\":2,\"group\":128," +
            "\"k_rotation\":\"per_head\",\"v_rotation\":\"per_head\",\"kept\":132}",
        read, written, launch, std::move(memory));
}

int run(int argc, char** argv) {
  std::string db = "results/kvq.db";
  Registry reg;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--db" && i + 1 < argc) db = argv[++i];
    else if (a == "--filter" && i + 1 < argc) reg.filter = argv[++i];
    else if (a == "--quick") quick = true;
    else throw Error("kvq-bench-cuda: unknown argument '" + a +
                     "' (usage: kvq-bench-cuda [--db PATH] [--filter REGEX] [--quick])");
  }
  const BackendEntry entry = cuda_backend_entry();
  if (!entry.available) {
    std::printf("SKIP: %s\n", entry.detail.c_str());
    return 77;
  }
  std::printf("kvq-bench-cuda: %s\n", entry.detail.c_str());
  if (quick) reg.repetitions = 3;
  add_rotate_quantize(reg, quick ? 8192 : 65536, false);
  add_rotate_quantize(reg, quick ? 8192 : 65536, true);
  for (int n : {128, 256, 512, 1024, 2048, 4096}) add_fwht(reg, n, int64_t{1} << (quick ? 22 : 26));
  for (int batch : {8, 1})  // B = 1: the single-sequence latency case
    for (int64_t t : {int64_t{4096}, int64_t{32768}, int64_t{131072}})
      if (!quick || t == 4096) add_attention(reg, batch, t);

  set_gpu_name_provider(&cuda_device_name);
  std::string command = "kvq-bench-cuda";
  for (int i = 1; i < argc; ++i) command += std::string(" ") + argv[i];
  Store store(db);
  const int64_t run_id = store.begin_run(collect_run_info("bench/bench_cuda.cpp", command));
  SqliteReporter reporter(reg.entries, store, run_id, command);
  int bm_argc = 1;
  char name[] = "kvq-bench-cuda";
  char* bm_argv[] = {name, nullptr};
  benchmark::Initialize(&bm_argc, bm_argv);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  store.finish_run(run_id, "complete");
  std::printf("kvq-bench-cuda: %d cases written to %s (run %lld)\n", reporter.cases_written(),
              db.c_str(), static_cast<long long>(run_id));
  return 0;
}

}  // namespace
}  // namespace kvq

int main(int argc, char** argv) {
  try {
    return kvq::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
}
