#!/usr/bin/env bash
# The llama.cpp / ggml CPU flash-attention peer of kvq's decode attention (docs/readme-avx.md).
# Builds ggml from a local git checkout (no network: the source is whatever GGML_SRC holds) into
# an ignored cache folder, builds tools/peers/ggml_attention.cpp against it and kvq's results
# store, then times ggml_flash_attn_ext over q4_0 and q8_0 K/V at perf.toml's shape and writes
# the rows to the kvq database as backends ggml-q4_0 / ggml-q8_0. Not part of .ci/run.
#
#   GGML_SRC=/path/to/ggml.git tools/peers/ggml_attention.sh [DB]
#
# GGML_SRC   a ggml or llama.cpp git directory (bare or not; e.g. a clone of
#            github.com/ggerganov/ggml); GGML_REV picks the commit (default HEAD)
# DB         results database (default results/kvq.db)
# OMP_NUM_THREADS  threads for ggml (default 1); GGML_TYPES (default "q4_0 q8_0");
# GGML_TOKENS (default "4096 32768"); GGML_REPS (default 5); KVQ_BUILD (default build: the
# kvq build whose harness/reference libraries the driver links); GGML_PEER_CACHE (default
# .cache/peers/ggml).
set -euo pipefail
cd "$(dirname "$0")/../.."
src=${GGML_SRC:?set GGML_SRC to a ggml or llama.cpp git directory}
rev=${GGML_REV:-HEAD}
db=${1:-results/kvq.db}
cache=${GGML_PEER_CACHE:-.cache/peers/ggml}
kvq_build=${KVQ_BUILD:-build}
sha=$(git --git-dir="$src" rev-parse "$rev")
tree="$cache/src-$sha"
if [ ! -f "$tree/CMakeLists.txt" ]; then
  mkdir -p "$tree"
  git --git-dir="$src" archive "$sha" | tar -x -C "$tree"
fi
# llama.cpp keeps ggml in ggml/; the ggml repository at its root.
root="$tree"
[ -f "$tree/ggml/CMakeLists.txt" ] && root="$tree/ggml"
if [ ! -f "$cache/build-$sha/done" ]; then
  cmake -S "$root" -B "$cache/build-$sha" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF >/dev/null
  cmake --build "$cache/build-$sha" -j "$(nproc)" --target ggml ggml-cpu ggml-base
  touch "$cache/build-$sha/done"
fi
mapfile -t libs < <(find "$cache/build-$sha" -name 'libggml*.a' | sort -r)
exe="$cache/ggml_attention-$sha"
if [ ! -x "$exe" ] || [ tools/peers/ggml_attention.cpp -nt "$exe" ]; then
  g++ -std=c++20 -O2 -fopenmp -I. -I"$root/include" tools/peers/ggml_attention.cpp \
    -Wl,--start-group "${libs[@]}" "$kvq_build/harness/libkvq_harness_core.a" \
    "$kvq_build/reference/libkvq_reference.a" -Wl,--end-group -lsqlite3 -lboost_program_options -ltomlplusplus -lpthread -o "$exe"
fi
for type in ${GGML_TYPES:-q4_0 q8_0}; do
  # shellcheck disable=SC2086
  "$exe" "$db" "${OMP_NUM_THREADS:-1}" "$type" "${GGML_REPS:-5}" ${GGML_TOKENS:-4096 32768}
done
