#!/usr/bin/env bash
# The tests: install what is missing, build, run every test binary (meson test) and the CPU
# gates, print why each skipped test skipped, and the plain summary line
# `N passed, N failed, N skipped` last.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${KVQ_BUILD:-build}

bash scripts/install-deps.sh || { echo "0 passed, 1 failed"; exit 1; }
# torch + transformers for tests/test_record_hf.py (suite 'hf'): a download of minutes on a
# fresh machine, so it runs beside the build and the other tests and is waited for at the end.
mkdir -p "$build"
bash scripts/install-deps.sh --hf > "$build/install-hf.log" 2>&1 &
hf_install=$!
if ! bash scripts/build.sh; then
  echo "build failed"
  echo "0 passed, 1 failed"
  exit 1
fi

passed=0 failed=0 skipped=0
count() {  # adds the counts of the meson test run just finished
  local p f s
  python3 scripts/count_tests.py "$build/meson-logs/testlog.json" > "$build/counts.txt"
  read -r p f s < "$build/counts.txt"
  passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
}

# The tests run with a temporary folder of their own, which they must leave empty (each test
# removes what it writes there: tests/scratch.h). 0755: a test may run kvq with fewer rights.
test_tmp=$(mktemp -d) && chmod 755 "$test_tmp"
# The gates' study recordings: cached beside the tests' (tests/meson.build), not in the tmp folder.
export KVQ_CACHE="$(cd "$build" && pwd)/tests/kvq-cache"
left_in_tmp() {  # counts a failure when a test run left anything in $test_tmp
  local left
  left=$(find "$test_tmp" -mindepth 1 -maxdepth 1 -printf '%f ' | head -c 400)
  if [ -n "$left" ]; then
    failed=$((failed + 1))
    echo "FAIL: the tests left files in the temporary folder: $left"
    rm -rf "${test_tmp:?}"/*
  fi
}

TMPDIR=$test_tmp meson test -C "$build" --print-errorlogs --num-processes 2 --no-suite hf
count
left_in_tmp

# The cross-backend gates over every CPU backend this machine has: synthetic inputs
# (scenarios/ci.toml), then the recorded activations of data/tiny-moe.safetensors
# (scenarios/ci-recording.toml). Both name ref, avx2 and avx512; the ones available here are
# named on the command line instead, so the gate fails if any of them skips a check, and a CPU
# without AVX-512 gates ref and avx2 only.
cpu_backends=$("$build/harness/kvq" backends --available | tr ',' '\n' |
               grep -xE 'ref|avx2|avx512' | paste -sd, -)
for gate in ci ci-recording; do
  if "$build/harness/kvq" gate "scenarios/$gate.toml" --backends "$cpu_backends" \
       --db "$build/$gate-gate.db"; then
    passed=$((passed + 1)); echo "gate scenarios/$gate.toml: PASS"
  else
    failed=$((failed + 1)); echo "gate scenarios/$gate.toml: FAIL"
  fi
done

if ! wait "$hf_install"; then
  echo "install-deps --hf failed (see $build/install-hf.log): record_hf will be skipped"
fi
cat "$build/install-hf.log"
TMPDIR=$test_tmp meson test -C "$build" --print-errorlogs --suite hf
count
left_in_tmp
rm -rf "$test_tmp"

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
