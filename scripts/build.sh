#!/usr/bin/env bash
# Configures (once) and builds kvq into ${KVQ_BUILD:-build}. CUDA is built when nvcc is on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${KVQ_BUILD:-build}
if [ ! -f "$build/build.ninja" ]; then
  meson setup "$build" >/dev/null || meson setup "$build"
fi
meson compile -C "$build"
