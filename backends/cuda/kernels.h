// Device-side entry points of the CUDA backend: every function takes device pointers, enqueues
// its kernels on `stream` and returns without synchronizing. The Backend (cuda_backend.cpp) and
// the device benchmark (bench/bench_cuda.cpp) call these; validation of user input happens in
// the Backend before any of them runs. Plain C++17 types only, so both g++ and nvcc include it.
#pragma once

#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace kvq::cuda {

// docs/spec.md §1: every consecutive block of n values of x (count values, a multiple of n) in
// place, stages in ascending h, then one multiply by `scale` (= fwht_scale(n)). 2 <= n <= 32768.
void fwht(float* x, int64_t count, int n, float scale, cudaStream_t stream);

// out[t, j] = x[t, perm[j]] (forward) or out[t, perm[j]] = x[t, j] (inverse), rows x channels.
void reorder(const float* x, float* out, int64_t rows, int64_t channels, const int32_t* perm,
             bool inverse, cudaStream_t stream);

// The packed layout of docs/spec.md §3 (reference/quantize.h GroupLayout), as the kernels need it.
struct DeviceQuantLayout {
  int64_t rows = 0, cols = 0, group = 0;  // group already clamped to the axis length
  int64_t groups_per_line = 0, group_count = 0;
  int bits = 2;
  bool channel_axis = false;
  bool int_zero_point = false;
  float clip = 1.0f;
};

// Quantize + pack x [rows, cols] fp32. codes must be zeroed by the caller only for the channel
// axis; token-axis kernels write every byte. zero (fp16 bits) is used for the float zero point,
// zero_int for the integer one. bad_group (device int64, preset to group_count) receives the
// lowest group whose scale or zero overflows fp16.
void quantize(const float* x, const DeviceQuantLayout& layout, uint8_t* codes, uint16_t* scale,
              uint16_t* zero, uint8_t* zero_int, int64_t* bad_group, cudaStream_t stream);
void dequantize(const uint8_t* codes, const uint16_t* scale, const uint16_t* zero,
                const uint8_t* zero_int, const DeviceQuantLayout& layout, float* out,
                cudaStream_t stream);

// The fused append path, token axis: widen (F32 = 0, F16 = 1, BF16 = 2), rotate (0 none,
// 1 grouped FWHT of `fwht_n` = head_group * head_dim values + optional reorder by perm, 2
// per-head FWHT of fwht_n = head_dim values), quantize and pack, in one kernel: one read of the
// input, one write of codes, scales and zeros. perm may be null (no reorder).
enum class InputType : int { F32 = 0, F16 = 1, BF16 = 2 };
struct FusedAppend {
  InputType input = InputType::F16;
  int rotation = 1;
  int fwht_n = 512;
  float fwht_scale = 0.0f;
  const int32_t* perm = nullptr;
};
void rotate_quantize_token(const void* kv, const FusedAppend& append,
                           const DeviceQuantLayout& layout, uint8_t* codes, uint16_t* scale,
                           uint16_t* zero, uint8_t* zero_int, int64_t* bad_group,
                           cudaStream_t stream);
// Widen to fp32 (the first step of the unfused path, used for the channel axis).
void widen(const void* kv, InputType input, int64_t count, float* out, cudaStream_t stream);

// docs/spec.md §4: per row, max |h| and its lowest channel.
void token_absmax(const float* hidden, int64_t tokens, int64_t hidden_size, float* absmax,
                  int32_t* argmax, cudaStream_t stream);

// docs/spec.md §5 per-expert statistic. key (device, num_experts uint64, zeroed by the caller)
// receives (max_abs bits << 32 | ~flat index); finish turns it into max/token/channel.
void expert_statistics(const int32_t* ids, const float* down_absmax, int64_t count,
                       unsigned long long* key, cudaStream_t stream);

// Decode attention over a packed cache (docs/spec.md §7, tolerance). Layout per sequence b:
// K and V codes/scales/zeros in the packed token-axis layout of `layout` (float zero point),
// `slot[t]` = row of the kept (fp32, already in the stored basis) arrays or -1. Batch stride:
// codes_stride bytes, groups_stride groups, kept rows are per sequence too (kept_stride rows).
struct PackedDecode {
  int batch = 1;
  int64_t tokens = 0;
  int heads = 0, head_dim = 0, q_heads = 0;
  DeviceQuantLayout layout;  // of one sequence's K (and V: same layout)
  const uint8_t* k_codes = nullptr;
  const uint16_t* k_scale = nullptr;
  const uint16_t* k_zero = nullptr;
  const uint8_t* v_codes = nullptr;
  const uint16_t* v_scale = nullptr;
  const uint16_t* v_zero = nullptr;
  const int32_t* k_slot = nullptr;  // [batch, tokens]
  const int32_t* v_slot = nullptr;  // [batch, tokens]
  const float* k_kept = nullptr;    // [batch, kept_stride, heads * head_dim]
  const float* v_kept = nullptr;
  int64_t kept_stride = 0;
  bool k_hadamard = false;  // per-head Hadamard on post-RoPE K: folded into q
  bool v_hadamard = false;  // per-head Hadamard on V: applied to o after the weighted sum
};
// Whether the packed kernel handles this shape (bits, group alignment, head_dim); otherwise the
// caller uses attention_decode_dense over reconstructed K and V.
bool packed_decode_supported(const PackedDecode& p);
// Scratch bytes the packed or dense path needs for `batch * q_heads` heads over `tokens`.
int64_t decode_scratch_bytes(int batch, int q_heads, int head_dim, int64_t tokens);
// q: [batch, q_heads, head_dim] post-RoPE; out: same shape.
void attention_decode_packed(const PackedDecode& p, const float* q, float* out, void* scratch,
                             cudaStream_t stream);
// Dense fp32 K and V [tokens, heads, head_dim] (one sequence).
void attention_decode_dense(const float* k, const float* v, int64_t tokens, int heads,
                            int head_dim, int q_heads, const float* q, float* out, void* scratch,
                            cudaStream_t stream);

}  // namespace kvq::cuda
