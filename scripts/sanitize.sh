#!/usr/bin/env bash
# The sanitizer run (issue 8): builds build-asan/ with gcc, AddressSanitizer + UBSan, and runs
# every unit test and the CI gates (scenarios/ci.toml, scenarios/ci-recording.toml) under them;
# prints the plain summary line `N passed, N failed, N skipped` last, as scripts/test.sh does.
# UB is fatal (-fno-sanitize-recover=undefined, halt_on_error), so any report fails its test.
#   usage: bash scripts/sanitize.sh            (build folder: ${KVQ_ASAN_BUILD:-build-asan})
# The build has no CUDA backend (-Dcuda=disabled), so test_cuda is not built.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${KVQ_ASAN_BUILD:-build-asan}

# -Dwerror=false: GCC 12 warns differently under -fsanitize (e.g. -Wmaybe-uninitialized);
# -Db_lundef=false: the sanitizer runtimes resolve symbols at load time.
options=(-Db_sanitize=address,undefined -Db_lundef=false -Dwerror=false
         -Dbuildtype=debugoptimized -Db_ndebug=false -Dcuda=disabled
         -Dcpp_args=-fno-sanitize-recover=undefined
         -Dcpp_link_args=-fno-sanitize-recover=undefined)
# --reconfigure on an existing folder: the meson.build files list sources that exist
# (fs.is_file), so a file added since the last setup is only picked up by a new configure.
reconfigure=()
[ -f "$build/build.ninja" ] && reconfigure=(--reconfigure)
CXX=g++ meson setup "${reconfigure[@]}" "$build" "${options[@]}" >/dev/null ||
  { echo "configure failed"; echo "0 passed, 1 failed"; exit 1; }
if ! nice -n 10 ninja -C "$build" -j2; then
  echo "build failed"
  echo "0 passed, 1 failed"
  exit 1
fi

export ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:check_initialization_order=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

# --timeout-multiplier: ASan makes the tests several times slower than the 600 s they allow.
meson test -C "$build" --no-rebuild --print-errorlogs --num-processes 2 --timeout-multiplier 3
python3 scripts/count_tests.py "$build/meson-logs/testlog.json" > "$build/counts.txt"
read -r passed failed skipped < "$build/counts.txt"

# The CPU backends available here, named so that the gate fails if one of them skips a check
# (as scripts/test.sh).
cpu_backends=$("$build/harness/kvq" backends --available | tr ',' '\n' |
               grep -xE 'ref|avx2|avx512' | paste -sd, -)
for scenario in scenarios/ci.toml scenarios/ci-recording.toml; do
  [ -f "$scenario" ] || continue
  name=$(basename "$scenario" .toml)
  rm -f "$build/$name-gate.db"*
  if "$build/harness/kvq" gate "$scenario" --backends "$cpu_backends" \
       --db "$build/$name-gate.db"; then
    passed=$((passed + 1)); echo "gate $scenario (asan+ubsan): PASS"
  else
    failed=$((failed + 1)); echo "gate $scenario (asan+ubsan): FAIL"
  fi
done

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
