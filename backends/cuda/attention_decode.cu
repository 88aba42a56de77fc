// Decode attention over a quantized cache (docs/spec.md §7, a tolerance op), flash-decoding style:
// split the tokens into chunks, one block per (KV head, chunk, sequence) computes a partial
// softmax (max m, sum l, unnormalized o) for the query heads of that KV head, and a combine
// kernel merges the chunks. fp32 arithmetic throughout, exp2 with log2(e) / sqrt(d) folded
// into q.
//
// Packed path (attention_decode_packed): reads the packed b-bit codes (b in {1, 2, 4, 8}) with
// 4- or 8-byte loads and dequantizes in registers without int->float conversions: OR-ing the
// masked code bits into the mantissa of 2^23 gives 2^23 + c * 2^pos exactly (pos + b <= 23),
// one subtraction gives c * 2^pos, and the power 2^-pos is folded into q (K) or applied to o
// at the end (V). The affine dequantization is split: q . (s c + z) = s (q . c) + z (sum q), and
// sum_j p_j (s_j c_j + z_j) = sum_j (p_j s_j) c_j + sum_j p_j z_j, so each element costs one
// mask, one subtract and one fma. Folded rotations: a per-head Hadamard on post-RoPE K is
// applied to q instead (q . H k' = (H q) . k'), a per-head Hadamard on V to o after the
// weighted sum (sum p H v' = H sum p v'). Kept fp16 rows (sinks, window) arrive already in the
// stored basis (the backend rotates them), so every token is treated alike. Bytes per token
// and head: 2 * (d b / 8 + 4 d / G) (K and V codes, fp16 scale and zero); the fp16 floor is
// 4 d, hence the 7.1x memory floor at b = 2, G = 128.
//
// Dense path (attention_decode_dense): the reconstructed fp32 K and V (pre-RoPE caches, the
// grouped K rotation, channel-axis or integer-zero-point quantization, sparse outliers): one
// warp per token stream, same chunking and combine.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "backends/cuda/cuda_error.h"
#include "backends/cuda/kernels.h"

namespace kvq::cuda {

namespace {

constexpr int kThreads = 128;
// Tokens per block: 1024, halved (down to 128) while batch * query heads * chunks stays under
// kTargetBlocks, so a single sequence at 4K still puts several blocks on each of 132 SMs.
constexpr int64_t kMaxChunk = 1024, kMinChunk = 128, kTargetBlocks = 1024;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -__builtin_huge_valf();

int64_t chunk_span(int64_t heads_total, int64_t tokens) {
  int64_t span = kMaxChunk;
  while (span > kMinChunk && heads_total * ((tokens + span - 1) / span) < kTargetBlocks) span /= 2;
  return span;
}
int64_t chunk_count(int64_t tokens, int64_t span) { return (tokens + span - 1) / span; }

__device__ __forceinline__ float half_value(uint16_t h) {
  return __half2float(__ushort_as_half(h));
}

// Merges `rows` streams of one block (o [rows][d] unnormalized, m and l per stream; a stream that
// saw no token has m = -inf) into one partial [m, l, o[d]] at `out`. Called by every thread.
__device__ void store_partial(const float* rows_o, const float* rows_m, const float* rows_l,
                              int rows, int d, float* out) {
  float mx = kNegInf;
  for (int r = 0; r < rows; ++r) mx = fmaxf(mx, rows_m[r]);
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float acc = 0.0f;
    for (int r = 0; r < rows; ++r)
      if (rows_m[r] != kNegInf) acc = fmaf(exp2f(rows_m[r] - mx), rows_o[r * d + c], acc);
    out[2 + c] = acc;
  }
  if (threadIdx.x == 0) {
    float lsum = 0.0f;
    for (int r = 0; r < rows; ++r)
      if (rows_m[r] != kNegInf) lsum = fmaf(exp2f(rows_m[r] - mx), rows_l[r], lsum);
    out[0] = mx;
    out[1] = lsum;
  }
}

// q_out = (H q if hadamard) * log2(e) / sqrt(d), one block of d threads (d <= 1024) per head.
__global__ void prepare_query_kernel(const float* __restrict__ q, int d, bool hadamard,
                                     float* __restrict__ out) {
  extern __shared__ float buf[];
  const int64_t head = blockIdx.x;
  for (int c = threadIdx.x; c < d; c += blockDim.x) buf[c] = q[head * d + c];
  __syncthreads();
  if (hadamard) {
    for (int h = 1; h < d; h *= 2) {
      for (int i = threadIdx.x; i < d / 2; i += blockDim.x) {
        const int j = (i / h) * 2 * h + i % h;
        const float a = buf[j], b = buf[j + h];
        buf[j] = a + b;
        buf[j + h] = a - b;
      }
      __syncthreads();
    }
  }
  const float scale = (hadamard ? rsqrtf(static_cast<float>(d)) : 1.0f) * kLog2e *
                      rsqrtf(static_cast<float>(d));
  for (int c = threadIdx.x; c < d; c += blockDim.x) out[head * d + c] = buf[c] * scale;
}

// Partials [heads_total][chunks][2 + d]: m, l, o[d] (o unnormalized).
// (Capping registers at 64 for 8 blocks per SM was measured slower: 3.04 vs 2.92 ms at 128K.)
template <int kBits, int kLoadBytes, int kNq>
__global__ void __launch_bounds__(kThreads)
    packed_kernel(PackedDecode p, const float* __restrict__ qprep, int q_slice,
                  float* __restrict__ partial, int64_t chunks, int64_t span) {
  constexpr int kCpw = 32 / kBits;                 // codes per 32-bit word
  constexpr int kWords = kLoadBytes / 4;
  constexpr int kCpt = kCpw * kWords;              // channels per thread
  constexpr int kStep = (23 / kBits) * kBits;      // window width for the 2^23 trick
  constexpr uint32_t kMask = (1u << kBits) - 1u;
  const int d = p.head_dim;
  const int tpr = d / kCpt;                        // threads per token row
  const int rows = kThreads / tpr;
  const int lane_in_row = static_cast<int>(threadIdx.x) % tpr;
  const int row = static_cast<int>(threadIdx.x) / tpr;
  const int hk = blockIdx.x;
  const int64_t chunk = blockIdx.y;
  const int b = blockIdx.z;
  const int per_kv = p.q_heads / p.heads;
  const int64_t cols = static_cast<int64_t>(p.heads) * d;
  const int c0 = hk * d + lane_in_row * kCpt;      // first channel of this thread
  const int64_t group = p.layout.group;
  const int64_t gpl = p.layout.groups_per_line;
  const int64_t t_begin = chunk * span;
  const int64_t t_end = t_begin + span < p.tokens ? t_begin + span : p.tokens;

  float qv[kNq][kCpt];
  float qsum[kNq];
#pragma unroll
  for (int q = 0; q < kNq; ++q) {
    const float* qh =
        qprep + (static_cast<int64_t>(b) * p.q_heads + hk * per_kv + q_slice + q) * d +
        lane_in_row * kCpt;
    qsum[q] = 0.0f;
#pragma unroll
    for (int k = 0; k < kCpt; ++k) {
      const int bitpos = (k % kCpw) * kBits;
      const int pos = bitpos - (bitpos / kStep) * kStep;
      qv[q][k] = qh[k] * (1.0f / static_cast<float>(1u << pos));
      qsum[q] += qh[k];
    }
  }
  float o[kNq][kCpt];
  float m[kNq], l[kNq], pz[kNq];
#pragma unroll
  for (int q = 0; q < kNq; ++q) {
    m[q] = kNegInf;
    l[q] = 0.0f;
    pz[q] = 0.0f;
#pragma unroll
    for (int k = 0; k < kCpt; ++k) o[q][k] = 0.0f;
  }

  const uint8_t* kc = p.k_codes + static_cast<int64_t>(b) * (p.tokens * cols * kBits / 8);
  const uint8_t* vc = p.v_codes + static_cast<int64_t>(b) * (p.tokens * cols * kBits / 8);
  const int64_t gstride = static_cast<int64_t>(b) * p.tokens * gpl;
  const int32_t* kslot = p.k_slot + static_cast<int64_t>(b) * p.tokens;
  const int32_t* vslot = p.v_slot + static_cast<int64_t>(b) * p.tokens;
  const int64_t kept_base = static_cast<int64_t>(b) * p.kept_stride * cols;

  // Every lane of a warp runs the same iterations (the row reduction shuffles), so a row past
  // the chunk's end reads token t_begin and contributes nothing. The loads of the next token
  // are issued before the current one is computed (software pipelining), so memory latency
  // overlaps the arithmetic.
  struct Loaded {
    uint32_t kw[kWords], vw[kWords];
    uint16_t ks, kz, vs, vz;
    int32_t kslot, vslot;
  };
  auto load = [&](int64_t t, Loaded& x) {
    const int64_t gidx = gstride + t * gpl + c0 / group;
    x.kslot = __ldg(kslot + t);
    x.vslot = __ldg(vslot + t);
    const int64_t byte = (t * cols + c0) * kBits / 8;
    if constexpr (kWords == 2) {
      const uint2 a = __ldcs(reinterpret_cast<const uint2*>(kc + byte));
      const uint2 c = __ldcs(reinterpret_cast<const uint2*>(vc + byte));
      x.kw[0] = a.x, x.kw[1] = a.y, x.vw[0] = c.x, x.vw[1] = c.y;
    } else {
      x.kw[0] = __ldcs(reinterpret_cast<const uint32_t*>(kc + byte));
      x.vw[0] = __ldcs(reinterpret_cast<const uint32_t*>(vc + byte));
    }
    x.ks = __ldg(p.k_scale + gidx);
    x.kz = __ldg(p.k_zero + gidx);
    x.vs = __ldg(p.v_scale + gidx);
    x.vz = __ldg(p.v_zero + gidx);
  };
  Loaded next;
  load(t_begin + row < t_end ? t_begin + row : t_begin, next);
  for (int64_t t0 = t_begin; t0 < t_end; t0 += rows) {
    const bool valid = t0 + row < t_end;
    const Loaded cur = next;
    const int64_t tn = t0 + rows + row;
    if (t0 + rows < t_end) load(tn < t_end ? tn : t_begin, next);
    const int32_t ks = cur.kslot;
    const int32_t vs = cur.vslot;
    const float ks_scale = half_value(cur.ks);
    const float ks_zero = half_value(cur.kz);
    const float vs_scale = half_value(cur.vs);
    const float vs_zero = half_value(cur.vz);

    // K: this thread's part of every query's dot product.
    float part[kNq];
    if (ks < 0) {
      float acc[kNq];
#pragma unroll
      for (int q = 0; q < kNq; ++q) acc[q] = 0.0f;
#pragma unroll
      for (int k = 0; k < kCpt; ++k) {
        const int bitpos = (k % kCpw) * kBits;
        const int base = (bitpos / kStep) * kStep;
        const int pos = bitpos - base;
        const uint32_t window = cur.kw[k / kCpw] >> base;
        const float val = __uint_as_float(0x4B000000u | (window & (kMask << pos))) - 8388608.0f;
#pragma unroll
        for (int q = 0; q < kNq; ++q) acc[q] = fmaf(qv[q][k], val, acc[q]);
      }
#pragma unroll
      for (int q = 0; q < kNq; ++q) part[q] = fmaf(ks_scale, acc[q], ks_zero * qsum[q]);
    } else {
      const float* kr = p.k_kept + kept_base + static_cast<int64_t>(ks) * cols + c0;
#pragma unroll
      for (int q = 0; q < kNq; ++q) part[q] = 0.0f;
#pragma unroll
      for (int k = 0; k < kCpt; ++k) {
        const int bitpos = (k % kCpw) * kBits;
        const int pos = bitpos - (bitpos / kStep) * kStep;
        const float val = kr[k] * static_cast<float>(1u << pos);
#pragma unroll
        for (int q = 0; q < kNq; ++q) part[q] = fmaf(qv[q][k], val, part[q]);
      }
    }
    float prob[kNq];
#pragma unroll
    for (int q = 0; q < kNq; ++q) {
      float s = part[q];
      for (int off = tpr / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xFFFFFFFFu, s, off);
      if (!valid) s = kNegInf;
      if (s > m[q]) {
        const float f = exp2f(m[q] - s);
        l[q] *= f;
        pz[q] *= f;
#pragma unroll
        for (int k = 0; k < kCpt; ++k) o[q][k] *= f;
        m[q] = s;
      }
      prob[q] = valid ? exp2f(s - m[q]) : 0.0f;
      l[q] += prob[q];
    }
    // V: o += p * v in the stored basis.
    if (vs < 0) {
      float ps[kNq];
#pragma unroll
      for (int q = 0; q < kNq; ++q) {
        ps[q] = prob[q] * vs_scale;
        pz[q] = fmaf(prob[q], vs_zero, pz[q]);
      }
#pragma unroll
      for (int k = 0; k < kCpt; ++k) {
        const int bitpos = (k % kCpw) * kBits;
        const int base = (bitpos / kStep) * kStep;
        const int pos = bitpos - base;
        const uint32_t window = cur.vw[k / kCpw] >> base;
        const float val = __uint_as_float(0x4B000000u | (window & (kMask << pos))) - 8388608.0f;
#pragma unroll
        for (int q = 0; q < kNq; ++q) o[q][k] = fmaf(ps[q], val, o[q][k]);
      }
    } else {
      const float* vr = p.v_kept + kept_base + static_cast<int64_t>(vs) * cols + c0;
#pragma unroll
      for (int k = 0; k < kCpt; ++k) {
        const int bitpos = (k % kCpw) * kBits;
        const int pos = bitpos - (bitpos / kStep) * kStep;
        const float val = vr[k] * static_cast<float>(1u << pos);
#pragma unroll
        for (int q = 0; q < kNq; ++q) o[q][k] = fmaf(prob[q], val, o[q][k]);
      }
    }
  }

  // Merge the row streams of this block: smem [rows][d] per query, then one thread per channel.
  extern __shared__ float smem[];
  float* rows_o = smem;                     // [rows][d]
  float* rows_m = smem + rows * d;          // [rows]
  float* rows_l = rows_m + rows;            // [rows]
  for (int q = 0; q < kNq; ++q) {
#pragma unroll
    for (int k = 0; k < kCpt; ++k) {
      const int bitpos = (k % kCpw) * kBits;
      const int pos = bitpos - (bitpos / kStep) * kStep;
      rows_o[row * d + lane_in_row * kCpt + k] =
          fmaf(o[q][k], 1.0f / static_cast<float>(1u << pos), pz[q]);
    }
    if (lane_in_row == 0) {
      rows_m[row] = m[q];
      rows_l[row] = l[q];
    }
    __syncthreads();
    const int64_t head = static_cast<int64_t>(b) * p.q_heads + hk * per_kv + q_slice + q;
    store_partial(rows_o, rows_m, rows_l, rows, d, partial + (head * chunks + chunk) * (2 + d));
    __syncthreads();
  }
}

}  // namespace
}  // namespace kvq::cuda

#include "backends/cuda/decode_mma_kernel.cuh"

namespace kvq::cuda {
namespace {

// Dense fp32 K, V [tokens, heads, d] (one sequence), one block per (query head, chunk): each
// warp streams tokens w, w + 4, ...; lanes hold channels lane + 32 i.
constexpr int kDenseMaxPerLane = 32;  // d <= 1024

__global__ void __launch_bounds__(kThreads)
    dense_kernel(const float* __restrict__ k, const float* __restrict__ v, int64_t tokens,
                 int heads, int d, int q_heads, const float* __restrict__ qprep,
                 float* __restrict__ partial, int64_t chunks, int64_t span) {
  const int head = blockIdx.x;
  const int64_t chunk = blockIdx.y;
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const int hk = head / (q_heads / heads);
  const int64_t cols = static_cast<int64_t>(heads) * d;
  const int64_t t_begin = chunk * span;
  const int64_t t_end = t_begin + span < tokens ? t_begin + span : tokens;
  float qv[kDenseMaxPerLane], o[kDenseMaxPerLane];
#pragma unroll
  for (int i = 0; i < kDenseMaxPerLane; ++i) {
    const int c = lane + 32 * i;
    qv[i] = c < d ? qprep[static_cast<int64_t>(head) * d + c] : 0.0f;
    o[i] = 0.0f;
  }
  float m = kNegInf, l = 0.0f;
  for (int64_t t = t_begin + warp; t < t_end; t += kThreads / 32) {
    const float* kr = k + t * cols + static_cast<int64_t>(hk) * d;
    const float* vr = v + t * cols + static_cast<int64_t>(hk) * d;
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < kDenseMaxPerLane; ++i) {
      const int c = lane + 32 * i;
      if (c < d) s = fmaf(qv[i], kr[c], s);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xFFFFFFFFu, s, off);
    if (s > m) {
      const float f = exp2f(m - s);
      l *= f;
#pragma unroll
      for (int i = 0; i < kDenseMaxPerLane; ++i) o[i] *= f;
      m = s;
    }
    const float pr = exp2f(s - m);
    l += pr;
#pragma unroll
    for (int i = 0; i < kDenseMaxPerLane; ++i) {
      const int c = lane + 32 * i;
      if (c < d) o[i] = fmaf(pr, vr[c], o[i]);
    }
  }
  extern __shared__ float smem[];
  float* rows_o = smem;  // [4][d]
  float* rows_m = smem + 4 * d;
  float* rows_l = rows_m + 4;
#pragma unroll
  for (int i = 0; i < kDenseMaxPerLane; ++i) {
    const int c = lane + 32 * i;
    if (c < d) rows_o[warp * d + c] = o[i];
  }
  if (lane == 0) rows_m[warp] = m, rows_l[warp] = l;
  __syncthreads();
  store_partial(rows_o, rows_m, rows_l, 4, d,
                partial + (static_cast<int64_t>(head) * chunks + chunk) * (2 + d));
}

// o = sum_c w_c O_c / sum_c w_c l_c, w_c = 2^(m_c - max m); then H o when V was rotated.
__global__ void combine_kernel(const float* __restrict__ partial, int64_t chunks, int d,
                               bool hadamard, float* __restrict__ out) {
  extern __shared__ float buf[];
  const int64_t head = blockIdx.x;
  const float* ph = partial + head * chunks * (2 + d);
  float mx = kNegInf;
  for (int64_t c = 0; c < chunks; ++c) mx = fmaxf(mx, ph[c * (2 + d)]);
  float lsum = 0.0f;
  for (int64_t c = 0; c < chunks; ++c) {
    const float mc = ph[c * (2 + d)];
    if (mc != kNegInf) lsum = fmaf(exp2f(mc - mx), ph[c * (2 + d) + 1], lsum);
  }
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float acc = 0.0f;
    for (int64_t c = 0; c < chunks; ++c) {
      const float mc = ph[c * (2 + d)];
      if (mc != kNegInf) acc = fmaf(exp2f(mc - mx), ph[c * (2 + d) + 2 + i], acc);
    }
    buf[i] = acc / lsum;
  }
  __syncthreads();
  if (hadamard) {
    for (int h = 1; h < d; h *= 2) {
      for (int i = threadIdx.x; i < d / 2; i += blockDim.x) {
        const int j = (i / h) * 2 * h + i % h;
        const float a = buf[j], b = buf[j + h];
        buf[j] = a + b;
        buf[j + h] = a - b;
      }
      __syncthreads();
    }
  }
  const float scale = hadamard ? rsqrtf(static_cast<float>(d)) : 1.0f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) out[head * d + i] = buf[i] * scale;
}

template <int kBits, int kLoadBytes>
constexpr int channels_per_thread() {
  return kLoadBytes * 8 / kBits;
}

// 4-byte loads (16 channels per thread at b = 2): ncu showed the 8-byte variant limited to 25%
// occupancy by its 127 registers.
int load_bytes_for(int) { return 4; }

template <int kBits, int kLoadBytes, int kNq>
void launch_packed(const PackedDecode& p, const float* qprep, float* partial, int64_t chunks,
                   int64_t span, cudaStream_t stream) {
  constexpr int kCpt = channels_per_thread<kBits, kLoadBytes>();
  const int tpr = p.head_dim / kCpt;
  const int rows = kThreads / tpr;
  const size_t smem = (static_cast<size_t>(rows) * p.head_dim + 2 * rows) * sizeof(float);
  const dim3 grid(static_cast<unsigned>(p.heads), static_cast<unsigned>(chunks),
                  static_cast<unsigned>(p.batch));
  const int per_kv = p.q_heads / p.heads;
  for (int slice = 0; slice < per_kv; slice += kNq) {
    packed_kernel<kBits, kLoadBytes, kNq>
        <<<grid, kThreads, smem, stream>>>(p, qprep, slice, partial, chunks, span);
    check_launch("attention_decode packed kernel");
  }
}

// The tensor-core path (decode_mma_kernel.cuh): 2 bits, head_dim 128, one group per head.
bool mma_decode_applies(const PackedDecode& p) {
  return p.layout.bits == 2 && p.head_dim == kMmaDim && p.layout.group % kMmaDim == 0;
}

template <int kNq>
void launch_mma(const PackedDecode& p, const float* qprep, float* partial, int64_t chunks,
                int64_t span, cudaStream_t stream) {
  const size_t smem = (kMmaWarps * kMmaDim + 2 * kMmaWarps) * sizeof(float);
  const dim3 grid(static_cast<unsigned>(p.heads), static_cast<unsigned>(chunks),
                  static_cast<unsigned>(p.batch));
  for (int slice = 0; slice < p.q_heads / p.heads; slice += kNq) {
    mma_decode_kernel<kNq><<<grid, kMmaWarps * 32, smem, stream>>>(p, qprep, slice, partial,
                                                                    chunks, span);
    check_launch("attention_decode mma kernel");
  }
}

template <int kBits>
void dispatch_packed(const PackedDecode& p, const float* qprep, float* partial, int64_t chunks,
                     int64_t span, cudaStream_t stream) {
  const int per_kv = p.q_heads / p.heads;
  if (mma_decode_applies(p)) {
    if (per_kv % 4 == 0)
      launch_mma<4>(p, qprep, partial, chunks, span, stream);
    else if (per_kv % 2 == 0)
      launch_mma<2>(p, qprep, partial, chunks, span, stream);
    else
      launch_mma<1>(p, qprep, partial, chunks, span, stream);
    return;
  }
  if (per_kv % 4 == 0)
    launch_packed<kBits, 4, 4>(p, qprep, partial, chunks, span, stream);
  else if (per_kv % 2 == 0)
    launch_packed<kBits, 4, 2>(p, qprep, partial, chunks, span, stream);
  else
    launch_packed<kBits, 4, 1>(p, qprep, partial, chunks, span, stream);
}

int slice_width(const PackedDecode& p) {
  const int per_kv = p.q_heads / p.heads;
  return per_kv % 4 == 0 ? 4 : per_kv % 2 == 0 ? 2 : 1;
}

}  // namespace

bool packed_decode_supported(const PackedDecode& p) {
  const DeviceQuantLayout& l = p.layout;
  const int b = l.bits;
  if (b != 1 && b != 2 && b != 4 && b != 8) return false;
  if (l.channel_axis || l.int_zero_point) return false;
  if (p.heads < 1 || p.q_heads % p.heads != 0 || p.head_dim < 1) return false;
  const int cpt = load_bytes_for(slice_width(p)) * 8 / b;
  const int64_t cols = static_cast<int64_t>(p.heads) * p.head_dim;
  if (p.head_dim % cpt != 0) return false;
  const int tpr = p.head_dim / cpt;
  if (tpr > 32 || (tpr & (tpr - 1)) != 0) return false;
  // Each thread's channels lie in one group, and groups tile every row exactly.
  return l.group % cpt == 0 && cols % l.group == 0 && l.groups_per_line * l.group == cols;
}

int64_t decode_scratch_bytes(int batch, int q_heads, int head_dim, int64_t tokens) {
  const int64_t heads = static_cast<int64_t>(batch) * q_heads;
  return (heads * chunk_count(tokens, chunk_span(heads, tokens)) * (2 + head_dim) +
          heads * head_dim) *
         static_cast<int64_t>(sizeof(float));
}

void attention_decode_packed(const PackedDecode& p, const float* q, float* out, void* scratch,
                             cudaStream_t stream) {
  const int64_t heads = static_cast<int64_t>(p.batch) * p.q_heads;
  const int64_t span = chunk_span(heads, p.tokens);
  const int64_t chunks = chunk_count(p.tokens, span);
  float* qprep = static_cast<float*>(scratch);
  float* partial = qprep + heads * p.head_dim;
  const int d = p.head_dim;
  const int threads = d < 1024 ? d : 1024;
  prepare_query_kernel<<<static_cast<unsigned>(heads), threads, d * sizeof(float), stream>>>(
      q, d, p.k_hadamard, qprep);
  check_launch("attention_decode prepare_query kernel");
  switch (p.layout.bits) {
    case 1: dispatch_packed<1>(p, qprep, partial, chunks, span, stream); break;
    case 2: dispatch_packed<2>(p, qprep, partial, chunks, span, stream); break;
    case 4: dispatch_packed<4>(p, qprep, partial, chunks, span, stream); break;
    default: dispatch_packed<8>(p, qprep, partial, chunks, span, stream); break;
  }
  combine_kernel<<<static_cast<unsigned>(heads), threads, d * sizeof(float), stream>>>(
      partial, chunks, d, p.v_hadamard, out);
  check_launch("attention_decode combine kernel");
}

void attention_decode_dense(const float* k, const float* v, int64_t tokens, int heads,
                            int head_dim, int q_heads, const float* q, float* out, void* scratch,
                            cudaStream_t stream) {
  const int64_t span = chunk_span(q_heads, tokens);
  const int64_t chunks = chunk_count(tokens, span);
  float* qprep = static_cast<float*>(scratch);
  float* partial = qprep + static_cast<int64_t>(q_heads) * head_dim;
  const int d = head_dim;
  const int threads = d < 1024 ? d : 1024;
  prepare_query_kernel<<<static_cast<unsigned>(q_heads), threads, d * sizeof(float), stream>>>(
      q, d, false, qprep);
  check_launch("attention_decode prepare_query kernel");
  const dim3 grid(static_cast<unsigned>(q_heads), static_cast<unsigned>(chunks));
  const size_t smem = (4 * static_cast<size_t>(d) + 8) * sizeof(float);
  dense_kernel<<<grid, kThreads, smem, stream>>>(k, v, tokens, heads, d, q_heads, qprep, partial,
                                                 chunks, span);
  check_launch("attention_decode dense kernel");
  combine_kernel<<<static_cast<unsigned>(q_heads), threads, d * sizeof(float), stream>>>(
      partial, chunks, d, false, out);
  check_launch("attention_decode combine kernel");
}

}  // namespace kvq::cuda
