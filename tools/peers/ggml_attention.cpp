// Peer timing for kvq's decode attention (docs/readme-avx.md): ggml's CPU flash attention
// (GGML_OP_FLASH_ATTN_EXT) over a q4_0 or q8_0 K/V cache at kvq's perf.toml shape (8 KV heads,
// 32 query heads, d = 128, one query), timed like `kvq bench` (median of the repetitions,
// spread = (max - min) / median) and written to kvq's results store as backend
// "ggml-<type>" under kvq's case names (attention_decode/T<tokens>), so `kvq report speedup`
// lists it beside kvq's backends. Built against a ggml checkout by tools/peers/ggml_attention.sh.
//
//   ggml_attention DB THREADS TYPE(q4_0|q8_0) REPETITIONS TOKENS...
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "ggml-cpu.h"
#include "ggml.h"
#include "harness/store/store.h"

namespace {

constexpr int64_t kHeads = 8, kQHeads = 32, kDim = 128;

// One timed case: seconds per call of each repetition (one warm-up call first).
std::vector<double> time_case(int64_t tokens, ggml_type type, int threads, int reps,
                              double* bytes) {
  const size_t kv_bytes = ggml_row_size(type, kDim) * tokens * kHeads;
  ggml_init_params ip{};
  ip.mem_size = 2 * kv_bytes + (64 << 20);
  ip.no_alloc = false;
  ggml_context* ctx = ggml_init(ip);
  ggml_tensor* q = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, kDim, 1, kQHeads, 1);
  ggml_tensor* k = ggml_new_tensor_4d(ctx, type, kDim, tokens, kHeads, 1);
  ggml_tensor* v = ggml_new_tensor_4d(ctx, type, kDim, tokens, kHeads, 1);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(tokens * kHeads * kDim));
  for (ggml_tensor* t : {k, v}) {
    for (float& e : x) e = normal(rng);
    ggml_quantize_chunk(type, x.data(), t->data, 0, tokens * kHeads, kDim, nullptr);
  }
  auto* qd = static_cast<float*>(q->data);
  for (int64_t i = 0; i < kQHeads * kDim; ++i) qd[i] = normal(rng);
  ggml_tensor* o = ggml_flash_attn_ext(ctx, q, k, v, nullptr, 1.0f / std::sqrt(float(kDim)), 0.0f,
                                       0.0f);
  ggml_cgraph* g = ggml_new_graph(ctx);
  ggml_build_forward_expand(g, o);
  *bytes = 2.0 * static_cast<double>(kv_bytes) + 4.0 * 2 * kQHeads * kDim;
  std::vector<double> s;
  ggml_graph_compute_with_ctx(ctx, g, threads);  // warm-up
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    ggml_graph_compute_with_ctx(ctx, g, threads);
    s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  ggml_free(ctx);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: %s DB THREADS q4_0|q8_0 REPETITIONS TOKENS...\n", argv[0]);
    return 2;
  }
  const std::string db = argv[1], type_name = argv[3];
  const int threads = std::atoi(argv[2]), reps = std::atoi(argv[4]);
  const ggml_type type = type_name == "q4_0" ? GGML_TYPE_Q4_0
                         : type_name == "q8_0" ? GGML_TYPE_Q8_0
                                               : GGML_TYPE_COUNT;
  if (type == GGML_TYPE_COUNT || threads < 1 || reps < 1) {
    std::fprintf(stderr, "ggml_attention: type must be q4_0 or q8_0, threads and repetitions >= 1\n");
    return 2;
  }
  ggml_cpu_init();
  std::string command;
  for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);
  kvq::Store store(db);
  const int64_t run = store.begin_run(kvq::collect_run_info("tools/peers/ggml_attention.sh", command));
  const std::string backend = "ggml-" + type_name;
  for (int a = 5; a < argc; ++a) {
    const int64_t tokens = std::atoll(argv[a]);
    double bytes = 0.0;
    std::vector<double> s = time_case(tokens, type, threads, reps, &bytes);
    std::sort(s.begin(), s.end());
    const double t = s[s.size() / 2], spread = (s.back() - s.front()) / t;
    kvq::CaseRecord rec;
    rec.name = "attention_decode/T" + std::to_string(tokens);
    rec.op = "attention_decode";
    rec.params_json = "{\"tokens\": " + std::to_string(tokens) +
                      ", \"heads\": 8, \"head_dim\": 128, \"q_heads\": 32, \"type\": \"" +
                      type_name + "\", \"threads\": " + std::to_string(threads) + "}";
    rec.repro = "tools/peers/ggml_attention.sh (GGML_TYPES=" + type_name + ")";
    store.add_case(run, rec, {},
                   {{backend, "time", t, "s", reps, spread},
                    {backend, "bandwidth", bytes / t / 1e9, "GB/s", reps, spread}});
    std::printf("%-28s %-10s %d threads  %.4g s  (spread %.2f)\n", rec.name.c_str(),
                backend.c_str(), threads, t, spread);
  }
  store.finish_run(run, "complete");
  return 0;
}
