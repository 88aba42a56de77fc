// The table of raw-pointer kernels one ISA translation unit provides (backends/avx/avx512.cpp,
// backends/avx/avx2.cpp). Validation, allocation and errors live in avx_backend.cpp, which is
// compiled without ISA flags: the ISA units contain nothing but kernels, so no inline function
// compiled with AVX-512 can be picked by the linker for code that runs on an AVX2-only CPU.
#pragma once

#include <cstdint>

namespace kvq::avx {

// Input element type of the fused append path.
enum class Src : uint8_t { F32, F16, BF16 };

// A quantization of [rows, cols] (docs/spec.md §3) with G already clamped; byte offsets as
// reference GroupLayout computes them.
struct QuantSpec {
  int bits = 2;
  bool channel_axis = false;
  bool int_zero = false;
  float clip = 1.0f;
  int64_t rows = 0, cols = 0, group = 0;
  int64_t groups_per_line = 0;  // token axis: groups per row; channel axis: row blocks
  int64_t line_bytes = 0;       // token axis: bytes per row of codes
  int64_t full_bytes = 0;       // bytes of one full group's stream
};

struct QuantOut {
  uint8_t* codes = nullptr;
  uint16_t* scale = nullptr;
  uint16_t* zero = nullptr;     // float zero point (fp16 bits), or null
  uint8_t* zero_int = nullptr;  // integer zero point, or null
};

// First failing flat indices, -1 when none; each kernel reports the lowest over all threads so
// errors do not depend on the thread count.
struct Faults {
  int64_t bad_input = -1;      // first non-finite input element
  int64_t bad_rotated = -1;    // first non-finite value after rotation (quantizer input index)
  int64_t bad_group = -1;      // first group whose scale or zero overflows fp16
  bool out_of_memory = false;  // a thread's scratch buffer could not be allocated
};

// Rotation of each row of the fused path: fwht over blocks of n (0 = none), then the optional
// permutation (stored[j] = rotated[perm[j]]).
struct RowRotation {
  int n = 0;
  float scale = 1.0f;
  const int32_t* perm = nullptr;
};

// One quantized part of a decode cache (the whole K or V, or one DecodeCache::QuantizedRows),
// validated by the caller (backends/avx/decode_cache.h).
struct DecodePart {
  const uint8_t* codes = nullptr;
  const uint16_t* scale = nullptr;
  const uint16_t* zero = nullptr;     // float zero point, or null
  const uint8_t* zero_int = nullptr;  // integer zero point, or null
  QuantSpec spec;
};

// Where K or V of each cached token comes from and how it returns to the original basis
// (reference reconstruct_keys / reconstruct_values, docs/spec.md §7), per token row of `cols`
// values.
struct DecodeSide {
  const float* f32 = nullptr;  // exact rows [tokens, cols]: when set, nothing else is read
  const DecodePart* parts = nullptr;
  const int32_t* part = nullptr;            // [tokens]: index into parts, or -1 = the fp16 row
  const int64_t* row = nullptr;             // [tokens]: the token's row in its part
  const uint16_t* fp16 = nullptr;           // kept rows [tokens, cols], original basis
  const int64_t* outlier_begin = nullptr;   // [tokens + 1] ranges into outlier_col/value, or null
  const int32_t* outlier_col = nullptr;     // column in the stored basis, in the cache's order
  const uint16_t* outlier_value = nullptr;  // fp16 bits
  const int32_t* unperm = nullptr;          // undo the reorder first: x[i] = y[unperm[i]], or null
  int fwht_n = 0;                           // then fwht over blocks of n (0 = none)
  float fwht_scale = 1.0f;
  const double* rope_freq = nullptr;  // [head_dim / 2] theta^(-2i/d): RoPE at the token, or null
};

// Tokens per work item of the decode attention: a thread rebuilds K and V rows of this many
// tokens (2 * 64 * channels floats; 512 KiB at 1024 channels, about one L2).
constexpr int64_t kDecodeChunk = 64;

// One decode-attention problem (reference attention_decode): q [q_heads, head_dim] post-RoPE.
struct DecodeProblem {
  int64_t tokens = 0, heads = 0, head_dim = 0, q_heads = 0;
  const float* q = nullptr;
  DecodeSide k, v;
};

struct Kernels {
  // x: blocks * n values, transformed in place (docs/spec.md §1).
  void (*fwht)(float* x, int64_t blocks, int n, float s);
  // out[t, j] = x[t, perm[j]] for rows of `cols` values.
  void (*reorder)(const float* x, int64_t rows, int64_t cols, const int32_t* perm, float* out);
  // out = perm(fwht_blocks(x)) per row (rotate_k, rotate_v); x and out may not alias. False
  // when scratch memory could not be allocated.
  bool (*rotate)(const float* x, int64_t rows, int64_t cols, const RowRotation& rot, float* out);
  Faults (*quantize)(const float* x, const QuantSpec& spec, const QuantOut& out);
  void (*dequantize)(const uint8_t* codes, const uint16_t* scale, const uint16_t* zero,
                     const uint8_t* zero_int, const QuantSpec& spec, float* out);
  // The fused append path: widen, rotate, quantize, pack; rows = tokens, cols = channels.
  Faults (*rotate_quantize)(const void* src, Src type, const RowRotation& rot,
                            const QuantSpec& spec, const QuantOut& out);
  // absmax[t] = max_c |h[t, c]|, argmax the lowest such c. Returns the first non-finite index.
  int64_t (*token_absmax)(const float* h, int64_t rows, int64_t cols, float* absmax,
                          int32_t* argmax);
  // o [q_heads, head_dim] of the decode attention (docs/spec.md §7, a tolerance op). False when
  // scratch memory could not be allocated.
  bool (*attention_decode)(const DecodeProblem& p, float* out);
  // fp16 conversions as the kernels do them (tested against reference/half.h).
  uint16_t (*to_half)(float f);
  float (*from_half)(uint16_t h);
};

const Kernels& avx512_kernels();
const Kernels& avx2_kernels();

}  // namespace kvq::avx
