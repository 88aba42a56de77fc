#!/usr/bin/env bash
# scripts/slurm/ on a real Slurm (tests/slurm_cluster.sh starts one on this machine):
#  1. sweep.sh SCENARIO 3 (an array of 3 shards and the afterany merge job): the merged
#     database equals the unsharded `kvq run` (cases, backends, check statuses and values,
#     sorted; ids, times and run rows aside);
#  2. a second sweep whose shard 1 is killed with scancel mid-run: the merge job fails, names
#     shard 1 incomplete, and kvq.db holds that run as 'incomplete'; shard 1 resubmitted alone
#     (GPU variant, --gpu): the new merge equals the unsharded run again;
#  3. a sweep whose shard 1 never ran: the merge job fails and names shard 1 missing.
# usage: tests/test_slurm.sh [SCENARIO]   (default scenarios/ci-recording.toml)
# KVQ_BIN is the kvq to test (meson sets it). Exit 77 (skipped) without the Slurm and munge
# packages (scripts/install-deps.sh installs them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kvq=$(realpath "${KVQ_BIN:-$root/build/harness/kvq}")
scenario=$(realpath "${1:-$root/scenarios/ci-recording.toml}")
for tool in munged slurmctld slurmd sbatch scontrol scancel sqlite3; do
  command -v "$tool" >/dev/null || { echo "test_slurm: no $tool (bash scripts/install-deps.sh): skipped"; exit 77; }
done
source "$root/tests/slurm_cluster.sh"
# Run inside a Slurm job, the caller's SBATCH_*/SLURM_* settings would leak into this cluster's.
while read -r name; do unset "$name"; done < <(compgen -e | grep -E '^(SBATCH|SLURM)_')

work=$(mktemp -d "${TMPDIR:-/tmp}/kvq-slurm.XXXXXX")
cleanup() { slurm_stop; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 1' TERM INT HUP  # a meson timeout still runs cleanup
fail() {
  echo "test_slurm: FAIL: $*" >&2
  slurm_dump_logs
  for f in "$work"/sweep*/logs/*; do echo "---- $f" >&2; cat "$f" >&2; done
  exit 1
}

# The results that must not depend on sharding, one sorted line per (case, backend) check and
# per non-time measurement.
results() {
  sqlite3 -separator ' | ' "$1" "
    SELECT c.name, c.op, c.params_json, k.backend, k.reference, k.status, k.mismatches,
           k.max_ulp, k.nmse, k.first_mismatch, k.expected, k.got
      FROM cases c JOIN checks k ON k.case_id = c.id ORDER BY c.name, k.backend;
    SELECT c.name, m.backend, m.metric, m.value, m.unit
      FROM cases c JOIN measurements m ON m.case_id = c.id WHERE m.metric != 'time'
      ORDER BY c.name, m.backend, m.metric;"
}

job_state() { scontrol show job "$1" -o 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
job_ended() { case "$(job_state "$1")" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) ;; *) return 1 ;; esac; }

# Submits a sweep (sweep.sh's arguments) and waits (bounded) for its merge job; sets $array
# and $merge to the two job ids.
sweep() {
  local line
  line=$(bash "$root/scripts/slurm/sweep.sh" "$@") || fail "sweep.sh $*"
  echo "$line"
  array=$(sed -n 's/.*shards job \([0-9]*\),.*/\1/p' <<<"$line")
  merge=$(sed -n 's/.*merge job \([0-9]*\) .*/\1/p' <<<"$line")
  [ -n "$array" ] && [ -n "$merge" ] || fail "no job ids in: $line"
}
wait_merge() { wait_for 150 job_ended "$merge" || fail "merge job $merge not ended in 150 s"; }

start=$SECONDS
slurm_start "$work/cluster" || fail "the cluster did not start"
echo "test_slurm: cluster up in $((SECONDS - start)) s"
"$kvq" run "$scenario" --db "$work/whole.db" >/dev/null || fail "unsharded run"
results "$work/whole.db" > "$work/whole.txt"
checks=$(wc -l < "$work/whole.txt")
((checks > 0)) || fail "the unsharded run has no checks"

# 1. Three shards and the merge.
sweep --dir "$work/sweep1" "$scenario" 3
wait_merge
[ "$(job_state "$merge")" = COMPLETED ] || fail "merge job $merge: $(job_state "$merge")"
cat "$work"/sweep1/logs/merge.job-*.out
grep -q "merge: all 3 shards complete" "$work"/sweep1/logs/merge.job-*.out || fail "merge log"
results "$work/sweep1/kvq.db" > "$work/sweep1.txt"
cmp "$work/whole.txt" "$work/sweep1.txt" || fail "sharded merge differs from the unsharded run"
echo "test_slurm: 3 shards merged = unsharded run ($checks sorted check rows equal)"

# 2. Shard 1 killed mid-run. Its kvq is a wrapper that stops kvq (SIGSTOP) once a case is
# committed, so scancel always finds the task running with part of its cases written.
cat > "$work/kvq-stops-shard-1" <<WRAP
#!/bin/bash
case " \$* " in *" --shard 1/3 --db "*) ;; *) exec "$kvq" "\$@" ;; esac
"$kvq" "\$@" &
db=\${!#}
for ((t = 0; t < 600; t++)); do
  [ "\$(sqlite3 "\$db" 'SELECT count(*) FROM cases' 2>/dev/null)" -gt 0 ] 2>/dev/null && break
  sleep 0.1
done
kill -STOP \$!
touch "$work/shard-1-stopped"
wait
WRAP
chmod +x "$work/kvq-stops-shard-1"
KVQ_BIN=$work/kvq-stops-shard-1 sweep --dir "$work/sweep2" "$scenario" 3
wait_for 60 test -e "$work/shard-1-stopped" || fail "shard 1 did not start"
scancel "${array}_1"
wait_merge
[ "$(job_state "$merge")" = FAILED ] || fail "merge job $merge after scancel: $(job_state "$merge")"
cat "$work"/sweep2/logs/merge.job-*.out
grep -q "^shard 1/3: incomplete" "$work"/sweep2/logs/merge.job-*.out || fail "merge log does not name shard 1"
runs=$(sqlite3 "$work/sweep2/kvq.db" "SELECT group_concat(status, ' ') FROM (SELECT status FROM runs ORDER BY status)")
[ "$runs" = "complete complete incomplete" ] || fail "merged runs: $runs"
partial=$(results "$work/sweep2/kvq.db" | wc -l)
((partial < checks)) || fail "the killed shard's merge has all $checks checks"
echo "test_slurm: shard 1 cancelled: merge FAILED, shard 1 incomplete ($partial of $checks checks)"

sweep --gpu --dir "$work/sweep2" --shards 1 "$scenario" 3
wait_merge
[ "$(job_state "$merge")" = COMPLETED ] || fail "merge job $merge after the rerun: $(job_state "$merge")"
cat "$work/sweep2/logs/merge.job-$merge.out"
grep -q " GPU " "$work/sweep2/logs/shard-1.job-$array.out" || fail "the --gpu rerun got no GPU"
ls "$work"/sweep2/replaced/shard-1.replaced-by-*.db >/dev/null || fail "the killed attempt was not kept"
results "$work/sweep2/kvq.db" > "$work/sweep2.txt"
cmp "$work/whole.txt" "$work/sweep2.txt" || fail "merge after the rerun differs from the unsharded run"
echo "test_slurm: shard 1 rerun (--gpu): merge = unsharded run ($checks sorted check rows equal)"
# 3. A shard that never ran (here never submitted; a task cancelled while pending alike).
sweep --dir "$work/sweep3" --shards 0,2 "$scenario" 3
wait_merge
[ "$(job_state "$merge")" = FAILED ] || fail "merge job $merge without shard 1: $(job_state "$merge")"
grep -q "^shard 1/3: missing" "$work/sweep3/logs/merge.job-$merge.out" || fail "shard 1 not named missing"
echo "test_slurm: shard 1 never ran: merge FAILED, shard 1 missing"
echo "test_slurm: PASS in $((SECONDS - start)) s"
