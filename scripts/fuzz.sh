#!/bin/bash
# Builds the libFuzzer targets (fuzz/) with clang, AddressSanitizer and UBSan in build-fuzz/ and
# runs each for N seconds (default 60), seeded with the hostile corpus (tests/corpus/), the
# committed scenarios and fuzz/corpus/<target>/. New crashing inputs are written to
# build-fuzz/crashes/; the script fails when a target fails.
#   usage: bash scripts/fuzz.sh [SECONDS] [TARGET...]   (targets: safetensors scenario llama2)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(safetensors scenario llama2)
build=${KVQ_FUZZ_BUILD:-build-fuzz}

if [ ! -d "$build" ]; then
  CXX=clang++ meson setup "$build" -Dfuzz=true -Dcuda=disabled -Dwerror=false \
    -Dbuildtype=debugoptimized -Db_ndebug=false
fi
nice -n 10 ninja -C "$build" -j2 $(printf 'fuzz/fuzz_%s ' "${targets[@]}")

mkdir -p "$build/crashes"
passed=()
failed=()
for t in "${targets[@]}"; do
  corpus="$build/corpus_$t"
  mkdir -p "$corpus"
  case $t in
    safetensors) cp -n tests/corpus/st_*.safetensors "$corpus"/ ;;
    scenario) cp -n tests/corpus/*.toml scenarios/*.toml "$corpus"/ ;;
    llama2) cp -n fuzz/corpus/llama2/*.seed "$corpus"/ ;;
  esac
  echo "== fuzz_$t for ${seconds}s"
  # Every target runs even when one before it failed; the summary names the failures.
  if UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1 \
    "$build/fuzz/fuzz_$t" "$corpus" -max_total_time="$seconds" -max_len=65536 -timeout=10 \
    -artifact_prefix="$build/crashes/${t}-" -print_final_stats=1; then
    passed+=("$t")
  else
    failed+=("$t")
  fi
done
echo "fuzz: ${#passed[@]} passed (${passed[*]}), ${#failed[@]} failed (${failed[*]})"
[ ${#failed[@]} -eq 0 ]
