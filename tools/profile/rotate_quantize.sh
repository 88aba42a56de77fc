#!/usr/bin/env bash
# Instructions per element of the AVX fused append path (rotate_quantize, perf.toml's case),
# where valgrind cannot run AVX-512: single-stepped by tools/profile/icount.cpp over one call
# at T and 2T tokens, the difference divided by T * 1024 elements (setup cancels), and split by
# the kernel's non-inlined functions (transpose, rotate_block, soa_group, ...) at 2T.
#   tools/profile/rotate_quantize.sh [avx512|avx2] [T]     (defaults avx512, 256; ~1 min)
# Needs a kvq build (KVQ_BUILD, default build) for the AVX and reference libraries; builds into
# .cache/profile.
set -euo pipefail
cd "$(dirname "$0")/../.."
isa=${1:-avx512}
t=${2:-256}
build=${KVQ_BUILD:-build}
out=.cache/profile
mkdir -p "$out"
g++ -std=c++20 -O2 -o "$out/icount" tools/profile/icount.cpp
g++ -std=c++20 -O2 -g -no-pie -fopenmp -I. -o "$out/driver" tools/profile/rotate_quantize_driver.cpp \
  "$build/backends/avx/libkvq_avx.a" "$build/backends/avx/libkvq_avx_avx512.a" \
  "$build/backends/avx/libkvq_avx_avx2.a" "$build/reference/libkvq_reference.a"
count() {  # instructions of one call at $1 tokens
  OMP_NUM_THREADS=1 ICOUNT_HIST="$out/hist-$1" "$out/icount" "$out/driver" "$isa" "$1" 1 mark \
    2>&1 >/dev/null | sed -n 's/^icount: \([0-9]*\) instructions$/\1/p'
}
n1=$(count "$t")
n2=$(count $((2 * t)))
awk -v a="$n1" -v b="$n2" -v t="$t" -v isa="$isa" 'BEGIN {
  printf "%s: %d instructions at T=%d, %d at T=%d: %.3f per element\n", isa, a, t, b, 2 * t,
    (b - a) / (t * 1024) }'
# Per function at 2T (whole call, setup included), instructions per element.
cut -d' ' -f1 "$out/hist-$((2 * t))" | sed 's/^/0x/' | addr2line -f -C -e "$out/driver" |
  sed -n 'p;n' | paste -d' ' - <(cut -d' ' -f2 "$out/hist-$((2 * t))") |
  awk -v e=$((2 * t * 1024)) '{ n = $NF; $NF = ""; if (!sub(/>\(.*/, ">")) sub(/\(.*/, ""); f[$0] += n }
    END { for (k in f) if (f[k] / e >= 0.005) printf "  %6.3f  %s\n", f[k] / e, k }' | sort -rn
