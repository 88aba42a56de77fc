#!/usr/bin/env bash
# Configures (once) and builds kvq into ${KVQ_BUILD:-build}. CUDA is built when nvcc is on PATH;
# the configure step's line saying whether it was built is shown (kept in $build/setup.log).
#   usage: bash scripts/build.sh [TARGET...]   (no target: everything, tests included;
#          e.g. `bash scripts/build.sh kvq` builds the command line alone)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${KVQ_BUILD:-build}
if [ ! -f "$build/build.ninja" ]; then
  mkdir -p "$build"
  if ! meson setup "$build" > "$build/setup.log" 2>&1; then
    cat "$build/setup.log"
    exit 1
  fi
fi
grep -h "CUDA backend" "$build/setup.log" "$build/meson-logs/meson-log.txt" 2>/dev/null |
  sed -n '1s/^.*\(CUDA backend\)/\1/p' || true
meson compile -C "$build" "$@"
