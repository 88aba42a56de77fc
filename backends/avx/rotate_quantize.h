// SIMD twins of reference reorder / rotate_k / rotate_v (reference/rotation.cpp, docs/spec.md §2)
// and of the fused append path reference_rotate_quantize (backends/reference_backend.cpp).
// Token axis: blocks of W tokens go channel-major through FWHT, reorder and quantization at once
// (token blocks, below); the remaining rows % W tokens, layouts the blocks do not take and tokens
// a block hands back go per token: widen F16/BF16/F32 into an L1-resident row buffer, grouped
// FWHT on it (fwht.h), gather through the permutation, then per group min/max, fp16 scale/zero,
// codes and packing (quantize.h). Both are one pass over the input, no full-size intermediate.
// The channel axis works on blocks of G rotated tokens (G * channels floats per thread), since
// its groups span tokens. Bytes moved per element (2-bit, fp16 in): 2 read + 0.25 written (+ 4/G
// scale and zero).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "backends/avx/fwht.h"
#include "backends/avx/kernels.h"
#include "backends/avx/quantize.h"

namespace kvq::avx {

// Per-thread scratch, 64-byte aligned (std::aligned_alloc needs a multiple of the alignment).
static inline float* scratch_floats(int64_t count) {
  const size_t bytes =
      (static_cast<size_t>(count > 0 ? count : 1) * sizeof(float) + 63) & ~size_t{63};
  return static_cast<float*>(std::aligned_alloc(64, bytes));
}

// Row `row` of the [rows, cols] input as fp32 into buf; false when it holds a non-finite value.
// The element type is a template parameter so the per-vector loop carries no type dispatch.
template <class S, Src kType>
inline bool widen_row_as(const void* src, int64_t row, int64_t cols, float* buf) {
  using V = typename S::V;
  V bad = S::zero();
  const int64_t base = row * cols;
  for (int64_t k = 0; k < cols; k += S::W) {
    const int m = cols - k < S::W ? static_cast<int>(cols - k) : S::W;
    V v;
    if constexpr (kType == Src::F32) {
      const float* p = static_cast<const float*>(src) + base + k;
      v = m == S::W ? S::load(p) : S::load_n(p, m, S::zero());
    } else if constexpr (kType == Src::F16) {
      v = S::load_f16_n(static_cast<const uint16_t*>(src) + base + k, m);
    } else {
      v = S::load_bf16_n(static_cast<const uint16_t*>(src) + base + k, m);
    }
    bad = S::nonfinite_acc(bad, v);
    if (m == S::W)
      S::store(buf + k, v);
    else
      S::store_n(buf + k, v, m);
  }
  return !S::any_bits(bad);
}

template <class S>
inline bool widen_row(const void* src, Src type, int64_t row, int64_t cols, float* buf) {
  switch (type) {
    case Src::F32: return widen_row_as<S, Src::F32>(src, row, cols, buf);
    case Src::F16: return widen_row_as<S, Src::F16>(src, row, cols, buf);
    default: return widen_row_as<S, Src::BF16>(src, row, cols, buf);
  }
}

template <class S>
inline void gather_row(const float* x, int64_t cols, const int32_t* perm, float* out) {
  if constexpr (!S::kFastGather) {  // scalar moves beat microcoded gathers (AMD Zen 1/2)
    for (int64_t j = 0; j < cols; ++j) out[j] = x[perm[j]];
    return;
  }
  for (int64_t j = 0; j < cols; j += S::W) {
    const int m = cols - j < S::W ? static_cast<int>(cols - j) : S::W;
    S::store_n(out + j, S::gather_n(x, perm + j, m), m);
  }
}

// Rotates the row in buf (fwht blocks, then permutation into tmp); returns the rotated row.
template <class S>
inline const float* rotate_row(float* buf, float* tmp, int64_t cols, const RowRotation& rot) {
  if (rot.n > 0) fwht_row<S>(buf, cols, rot.n, rot.scale);
  if (!rot.perm) return buf;
  gather_row<S>(buf, cols, rot.perm, tmp);
  return tmp;
}

template <class S>
void reorder_kernel(const float* x, int64_t rows, int64_t cols, const int32_t* perm, float* out) {
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
  for (int64_t t = 0; t < rows; ++t) gather_row<S>(x + t * cols, cols, perm, out + t * cols);
}

// Returns false when a thread's scratch row could not be allocated.
template <class S>
bool rotate_kernel(const float* x, int64_t rows, int64_t cols, const RowRotation& rot, float* out) {
  int oom = 0;
#pragma omp parallel reduction(max : oom) if (rows * cols > 65536)
  {
    float* buf = rot.perm ? scratch_floats(cols) : nullptr;
    if (rot.perm && !buf) oom = 1;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < rows; ++t) {
      if (rot.perm && !buf) continue;
      float* dst = out + t * cols;
      float* work = rot.perm ? buf : dst;
      std::memcpy(work, x + t * cols, static_cast<size_t>(cols) * sizeof(float));
      if (rot.n > 0) fwht_row<S>(work, cols, rot.n, rot.scale);
      if (rot.perm) gather_row<S>(work, cols, rot.perm, dst);
    }
    std::free(buf);
  }
  return oom == 0;
}

// The per-token path of the token axis: row t widened, rotated into buf / tmp, quantized by
// quantize_row_token; faults kept as the lowest flat index (docs/spec.md §0 errors).
template <class S>
inline void token_row(const void* src, Src type, int64_t t, const RowRotation& rot,
                      const QuantSpec& spec, typename S::VI shifts, const QuantOut& out, float* buf,
                      float* tmp, int64_t& bad_input, int64_t& bad_rotated, int64_t& bad_group) {
  const int64_t cols = spec.cols;
  if (!widen_row<S>(src, type, t, cols, buf)) {
    const int64_t k = t * cols + first_nonfinite(buf, cols);
    if (k < bad_input) bad_input = k;
    return;
  }
  const float* q = rotate_row<S>(buf, tmp, cols, rot);
  int64_t bg = -1;
  const int64_t k = quantize_row_token<S>(q, t, spec, shifts, out, bg);
  if (k >= 0 && t * cols + k < bad_rotated) bad_rotated = t * cols + k;
  if (bg >= 0 && bg < bad_group) bad_group = bg;
}

// ---- Token blocks ---------------------------------------------------------------------------
// The token axis in blocks of W tokens held channel-major (vector c = channel c of the W tokens):
// the input is transposed by S::stage_u16 / S::stage_f32 (16-bit values stay 16-bit until the
// first FWHT pass widens them as it loads; on AVX-512 a first pass of 3 stages runs on the
// transposed registers, S::stage_f16_groups8), the FWHT stages are whole-vector butterflies
// (fwht_soa_pass), the last pass multiplies by the scale and stores each vector at its permuted
// position (stored[j] = rotated[perm[j]], so the reorder costs one table load per vector), and
// the groups are quantized lane-wise (soa_group). Each lane computes exactly the reference's
// operations, so results are bit-exact and do not depend on how tokens are blocked; lanes that
// soa_group sends back (zero min/max, zero scale, overflow, NaN) and the rows % W last tokens
// take the per-token path. Per thread: W * channels * (4 + 4 + 2) bytes of scratch (160 KiB for
// AVX-512 at 1024 channels: the fwht block being transformed stays in L1, the permuted block in
// L2). Instructions per element (fp16 in, n = 512 with reorder, G = 128, 2 bits: perf.toml's
// case): 4.8 on AVX2 and 2.4 on AVX-512 (tools/profile/rotate_quantize.sh, single-stepped:
// valgrind does not run AVX-512), from 13.7 and 6.2 per token.

// True when the token-block path handles this layout: whole groups of whole 32-bit code words
// (b in {1, 2, 4, 8}, G * b a multiple of 32, G dividing the channels) and whole staging chunks.
template <class S>
inline bool token_blocks_apply(const QuantSpec& spec) {
  const int b = spec.bits;
  return !spec.channel_axis && spec.rows >= S::W && spec.cols % S::kStageCols == 0 &&
         spec.group > 0 && spec.cols % spec.group == 0 && (b == 1 || b == 2 || b == 4 || b == 8) &&
         (spec.group * b) % 32 == 0;
}

// Rotates tokens t0 .. t0 + W - 1 into channel-major vectors; returns them (a, or b when the
// rotation permutes). perm_offset[q]: byte offset in b of the q-th vector the last pass stores
// (fwht_soa_visit order), so the permuted store walks the table with one running index.
template <class S, Src kType>
inline const float* rotate_block(const void* src, int64_t t0, int64_t cols, const RowRotation& rot,
                                 const SoaPasses& passes, const int64_t* perm_offset,
                                 bool prefetch_rows, uint16_t* stage, float* a, float* b) {
  using V = typename S::V;
  constexpr int W = S::W;
  const int n = rot.n > 0 ? rot.n : 1;
  const V scale = S::set1(rot.n > 0 ? rot.scale : 1.0f);  // x * 1 is x, bit for bit
  const int64_t span = n > S::kStageCols ? n : S::kStageCols;
  char* const bb = reinterpret_cast<char*>(b);
  auto load_first = [=](int64_t i, int j, int64_t) {  // pass 0 has h0 = 1
    if constexpr (kType == Src::F32) {
      return S::load(a + (i + j) * W);
    } else if constexpr (kType == Src::F16) {
      return S::load_f16(stage + (i + j) * W);
    } else {
      return S::load_bf16(stage + (i + j) * W);
    }
  };
  // The next block's rows are fetched while this one computes: W row streams at once are more
  // than the hardware prefetchers follow (AMD Zen; on the Intel Xeon host 6-10 % faster on one
  // thread at perf.toml's size, docs/readme-avx.md session 5). Bytes per cache line: 64.
  using Elem = std::conditional_t<kType == Src::F32, float, uint16_t>;
  constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(Elem));
  const Elem* x = static_cast<const Elem*>(src) + t0 * cols;
  const char* next = prefetch_rows ? reinterpret_cast<const char*>(x + W * cols) : nullptr;
  const int64_t row_bytes = cols * static_cast<int64_t>(sizeof(Elem));
  // fp16 input whose first FWHT pass is 3 stages and not the last: that pass runs inside the
  // transpose (S::stage_f16_groups8), which then stores fp32 to a instead of 16-bit to stage.
  bool fused_first = false;
  if constexpr (kType == Src::F16 && S::kStageGroups8)
    fused_first = passes.count > 1 && passes.k[0] == 3 && passes.h0[0] == 1;
  for (int64_t c0 = 0; c0 < cols; c0 += span) {
    if (next)
      for (int64_t c = c0; c < c0 + span; c += kLine) {
        const char* p = next + c * static_cast<int64_t>(sizeof(Elem));
#pragma GCC unroll 16
        for (int l = 0; l < W; ++l, p += row_bytes) _mm_prefetch(p, _MM_HINT_T0);
      }
    if constexpr (kType == Src::F32) {
      for (int64_t c = c0; c < c0 + span; c += W) S::stage_f32(x + c, cols, a + c * W);
    } else {
      if constexpr (S::kStageGroups8) {
        if (fused_first) {
          // The first pass (3 stages on 8 consecutive channels) on the transposed registers.
          for (int64_t c = c0; c < c0 + span; c += S::kStageCols)
            S::stage_f16_groups8(x + c, cols, [&](int h, V(&r)[8]) __attribute__((always_inline)) {
              fwht_vector_stages<S>(r);
              float* out = a + (c + 8 * h) * W;
#pragma GCC unroll 8
              for (int j = 0; j < 8; ++j) S::store(out + j * W, r[j]);
            });
        }
      }
      if (!fused_first)
        for (int64_t c = c0; c < c0 + span; c += S::kStageCols)
          S::stage_u16(x + c, cols, stage + c * W);
    }
    for (int64_t blk = c0; blk < c0 + span; blk += n) {
      for (int p = fused_first ? 1 : 0; p < passes.count; ++p) {
        const int64_t h0 = passes.h0[p];
        const int K = passes.k[p];
        auto load_a = [=](int64_t i, int j, int64_t) { return S::load(a + (i + j * h0) * W); };
        auto store_a = [=](int64_t i, int j, int64_t, V v) { S::store(a + (i + j * h0) * W, v); };
        auto store_scaled = [=](int64_t i, int j, int64_t, V v) {
          S::store(a + (i + j * h0) * W, S::mul(v, scale));
        };
        auto store_permuted = [=](int64_t, int j, int64_t q, V v) {
          S::store(reinterpret_cast<float*>(bb + perm_offset[q + j]), S::mul(v, scale));
        };
        const bool first = p == 0, last = p + 1 == passes.count;
        if (first && last) {
          if (perm_offset)
            fwht_soa_pass_k<S>(K, blk, n, h0, load_first, store_permuted);
          else
            fwht_soa_pass_k<S>(K, blk, n, h0, load_first, store_scaled);
        } else if (first) {
          fwht_soa_pass_k<S>(K, blk, n, h0, load_first, store_a);
        } else if (last) {
          if (perm_offset)
            fwht_soa_pass_k<S>(K, blk, n, h0, load_a, store_permuted);
          else
            fwht_soa_pass_k<S>(K, blk, n, h0, load_a, store_scaled);
        } else {
          fwht_soa_pass_k<S>(K, blk, n, h0, load_a, store_a);
        }
      }
    }
  }
  return perm_offset ? b : a;
}

template <class S, Src kType, int B, bool IntZero>
void rotate_quantize_blocks(const void* src, const RowRotation& rot, const QuantSpec& spec,
                            const QuantOut& out, const int64_t* perm_offset, Faults& f) {
  constexpr int W = S::W;
  int64_t bad_input = INT64_MAX, bad_rotated = INT64_MAX, bad_group = INT64_MAX;
  int oom = 0;
  const int64_t cols = spec.cols, G = spec.group, gpl = spec.groups_per_line;
  const int64_t blocks = spec.rows / W, tail0 = blocks * W;
  const int64_t items = blocks + (spec.rows - tail0);
  const SoaPasses passes = soa_passes<S>(rot.n);
  const typename S::VI shifts = S::lane_shifts(spec.bits);
#pragma omp parallel reduction(min                                  \
                               : bad_input, bad_rotated, bad_group) \
    reduction(max                                                   \
              : oom) if (spec.rows * cols > 65536)
  {
    uint16_t* stage = nullptr;
    if constexpr (kType != Src::F32)
      stage = reinterpret_cast<uint16_t*>(scratch_floats((cols * W + 1) / 2));
    float* a = scratch_floats(cols * W);
    float* b = perm_offset ? scratch_floats(cols * W) : nullptr;
    float* buf = scratch_floats(cols);
    float* tmp = scratch_floats(cols);
    const bool ok = (kType == Src::F32 || stage) && a && (!perm_offset || b) && buf && tmp;
    if (!ok) oom = 1;
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {
      if (!ok) continue;
      if (it >= blocks) {
        token_row<S>(src, kType, tail0 + it - blocks, rot, spec, shifts, out, buf, tmp, bad_input,
                     bad_rotated, bad_group);
        continue;
      }
      const int64_t t0 = it * W;
      const bool prefetch = t0 + 2 * W <= spec.rows;  // the next block exists
      const float* q =
          rotate_block<S, kType>(src, t0, cols, rot, passes, perm_offset, prefetch, stage, a, b);
      unsigned redo = 0;
      for (int64_t g = 0; g < gpl; ++g) {
        const int64_t meta = t0 * gpl + g;
        redo |= soa_group<S, B, IntZero>(
            q + g * G * W, G, spec.clip, out.codes + t0 * spec.line_bytes + g * spec.full_bytes,
            spec.line_bytes, out.scale + meta, IntZero ? nullptr : out.zero + meta,
            IntZero ? out.zero_int + meta : nullptr, gpl);
      }
      for (; redo != 0; redo &= redo - 1)
        token_row<S>(src, kType, t0 + __builtin_ctz(redo), rot, spec, shifts, out, buf, tmp,
                     bad_input, bad_rotated, bad_group);
    }
    std::free(stage);
    std::free(a);
    std::free(b);
    std::free(buf);
    std::free(tmp);
  }
  f.bad_input = bad_input == INT64_MAX ? -1 : bad_input;
  f.bad_rotated = bad_rotated == INT64_MAX ? -1 : bad_rotated;
  f.bad_group = bad_group == INT64_MAX ? -1 : bad_group;
  f.out_of_memory = oom != 0;
}

template <class S, Src kType>
void rotate_quantize_blocks_as(const void* src, const RowRotation& rot, const QuantSpec& spec,
                               const QuantOut& out, const int64_t* perm_offset, Faults& f) {
  const bool iz = spec.int_zero;
  switch (spec.bits) {
    case 1:
      iz ? rotate_quantize_blocks<S, kType, 1, true>(src, rot, spec, out, perm_offset, f)
         : rotate_quantize_blocks<S, kType, 1, false>(src, rot, spec, out, perm_offset, f);
      break;
    case 2:
      iz ? rotate_quantize_blocks<S, kType, 2, true>(src, rot, spec, out, perm_offset, f)
         : rotate_quantize_blocks<S, kType, 2, false>(src, rot, spec, out, perm_offset, f);
      break;
    case 4:
      iz ? rotate_quantize_blocks<S, kType, 4, true>(src, rot, spec, out, perm_offset, f)
         : rotate_quantize_blocks<S, kType, 4, false>(src, rot, spec, out, perm_offset, f);
      break;
    default:
      iz ? rotate_quantize_blocks<S, kType, 8, true>(src, rot, spec, out, perm_offset, f)
         : rotate_quantize_blocks<S, kType, 8, false>(src, rot, spec, out, perm_offset, f);
      break;
  }
}

// The token-block path (token_blocks_apply true).
template <class S>
Faults rotate_quantize_token_blocks(const void* src, Src type, const RowRotation& rot,
                                    const QuantSpec& spec, const QuantOut& out) {
  Faults f;
  int64_t* perm_offset = nullptr;
  if (rot.perm) {
    // Two tables of cols entries: to[c] = byte offset in b of rotated channel c (stored[j] =
    // rotated[perm[j]] puts channel perm[j] at vector j), then the same in last-pass order.
    perm_offset = static_cast<int64_t*>(std::malloc(static_cast<size_t>(spec.cols) * 16));
    if (!perm_offset) {
      f.out_of_memory = true;
      return f;
    }
    int64_t* const to = perm_offset + spec.cols;
    for (int64_t j = 0; j < spec.cols; ++j)
      to[rot.perm[j]] = j * S::W * static_cast<int64_t>(sizeof(float));
    const SoaPasses passes = soa_passes<S>(rot.n);
    const int last = passes.count - 1;
    const int n = rot.n > 0 ? rot.n : 1;
    for (int64_t blk = 0; blk < spec.cols; blk += n)
      fwht_soa_visit(passes.k[last], blk, n, passes.h0[last],
                     [&](int64_t q, int64_t c) { perm_offset[q] = to[c]; });
  }
  switch (type) {
    case Src::F32:
      rotate_quantize_blocks_as<S, Src::F32>(src, rot, spec, out, perm_offset, f);
      break;
    case Src::F16:
      rotate_quantize_blocks_as<S, Src::F16>(src, rot, spec, out, perm_offset, f);
      break;
    default: rotate_quantize_blocks_as<S, Src::BF16>(src, rot, spec, out, perm_offset, f); break;
  }
  std::free(perm_offset);
  return f;
}

template <class S>
Faults rotate_quantize_kernel(const void* src, Src type, const RowRotation& rot,
                              const QuantSpec& spec, const QuantOut& out) {
  if (token_blocks_apply<S>(spec))
    return rotate_quantize_token_blocks<S>(src, type, rot, spec, out);
  int64_t bad_input = INT64_MAX, bad_rotated = INT64_MAX, bad_group = INT64_MAX;
  int oom = 0;
  const int64_t cols = spec.cols;
  if (!spec.channel_axis) {
    const typename S::VI shifts = S::lane_shifts(spec.bits);
#pragma omp parallel reduction(min                                  \
                               : bad_input, bad_rotated, bad_group) \
    reduction(max                                                   \
              : oom) if (spec.rows * cols > 65536)
    {
      float* buf = scratch_floats(cols);
      float* tmp = scratch_floats(cols);
      if (!buf || !tmp) oom = 1;
#pragma omp for schedule(static)
      for (int64_t t = 0; t < spec.rows; ++t) {
        if (!buf || !tmp) continue;
        token_row<S>(src, type, t, rot, spec, shifts, out, buf, tmp, bad_input, bad_rotated,
                     bad_group);
      }
      std::free(buf);
      std::free(tmp);
    }
  } else {
    const int64_t blocks = spec.groups_per_line;
#pragma omp parallel reduction(min                                  \
                               : bad_input, bad_rotated, bad_group) \
    reduction(max                                                   \
              : oom) if (spec.rows * cols > 65536)
    {
      float* block = scratch_floats(spec.group * cols);
      float* tmp = scratch_floats(cols);
      if (!block || !tmp) oom = 1;
#pragma omp for schedule(static)
      for (int64_t rb = 0; rb < blocks; ++rb) {
        if (!block || !tmp) continue;
        const int64_t r0 = rb * spec.group;
        const int64_t gs = min_i64(spec.group, spec.rows - r0);
        bool input_ok = true;
        for (int64_t r = 0; r < gs && input_ok; ++r) {
          float* row = block + r * cols;
          if (!widen_row<S>(src, type, r0 + r, cols, row)) {
            const int64_t k = (r0 + r) * cols + first_nonfinite(row, cols);
            if (k < bad_input) bad_input = k;
            input_ok = false;
            break;
          }
          const float* q = rotate_row<S>(row, tmp, cols, rot);
          if (q != row) std::memcpy(row, q, static_cast<size_t>(cols) * sizeof(float));
        }
        if (!input_ok) continue;
        uint8_t* block_codes = out.codes + rb * cols * spec.full_bytes;
        for (int64_t c0 = 0; c0 < cols; c0 += S::W) {
          const int nl = static_cast<int>(min_i64(S::W, cols - c0));
          int64_t bg = -1;
          const int64_t k =
              quantize_channel_chunk<S>(block, gs, c0, nl, rb, spec, out, block_codes, bg);
          if (k >= 0 && r0 * cols + k < bad_rotated) bad_rotated = r0 * cols + k;
          if (bg >= 0 && bg < bad_group) bad_group = bg;
        }
      }
      std::free(block);
      std::free(tmp);
    }
  }
  Faults f;
  f.bad_input = bad_input == INT64_MAX ? -1 : bad_input;
  f.bad_rotated = bad_rotated == INT64_MAX ? -1 : bad_rotated;
  f.bad_group = bad_group == INT64_MAX ? -1 : bad_group;
  f.out_of_memory = oom != 0;
  return f;
}

}  // namespace kvq::avx
