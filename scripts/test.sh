#!/usr/bin/env bash
# The tests: install what is missing, build, run every test binary (meson test) and the CPU
# gate, and print the plain summary line `N passed, N failed, N skipped` last.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${KVQ_BUILD:-build}

bash scripts/install-deps.sh || { echo "0 passed, 1 failed"; exit 1; }
if ! bash scripts/build.sh; then
  echo "build failed"
  echo "0 passed, 1 failed"
  exit 1
fi

meson test -C "$build" --print-errorlogs --num-processes 2
python3 scripts/count_tests.py "$build/meson-logs/testlog.json" > "$build/counts.txt"
read -r passed failed skipped < "$build/counts.txt"

# The cross-backend gate over every CPU backend this machine has (scenarios/ci.toml).
if [ -f scenarios/ci.toml ]; then
  if "$build/harness/kvq" gate scenarios/ci.toml --db "$build/ci-gate.db"; then
    passed=$((passed + 1)); echo "gate scenarios/ci.toml: PASS"
  else
    failed=$((failed + 1)); echo "gate scenarios/ci.toml: FAIL"
  fi
fi

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
