#!/usr/bin/env bash
# Submits a kvq sweep to Slurm: an array of N shard tasks (shard.sbatch) and a merge job
# (merge.sbatch) that starts when every task has ended, however it ended.
#   scripts/slurm/sweep.sh [--gpu] [--dir DIR] [--shards LIST] SCENARIO N [sbatch options...]
# --gpu         each shard asks for one GPU (--gres=gpu:1), for scenarios with the cuda backend
# --dir DIR     where the sweep lands (default results/slurm/<scenario>-<UTC time>): shard-i.db
#               per task, logs/, and the merged kvq.db
# --shards LIST the array indices to (re)submit, e.g. 7 or 3,5 (default 0-(N-1)); with --dir
#               of an earlier sweep this reruns those shards and merges the whole sweep again
# Options after N go to the shard array (e.g. --partition=gpu --time=02:00:00
# --cpus-per-task=8); SBATCH_* environment variables apply to both jobs as sbatch documents.
# The kvq binary is $KVQ_BIN, default build/harness/kvq of this repository.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
usage="usage: scripts/slurm/sweep.sh [--gpu] [--dir DIR] [--shards LIST] SCENARIO N [sbatch options...]"
gres=() dir="" shards=""
while (($#)); do
  case "$1" in
    --gpu) gres=(--gres=gpu:1); shift ;;
    --dir) dir=${2:?$usage}; shift 2 ;;
    --shards) shards=${2:?$usage}; shift 2 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) break ;;
  esac
done
(($# >= 2)) || { echo "$usage" >&2; exit 2; }
scenario=$1 n=$2
shift 2
[ -f "$scenario" ] || { echo "sweep: $scenario: no such scenario file" >&2; exit 2; }
[[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "sweep: N '$n' must be a positive integer" >&2; exit 2; }
kvq=$(realpath "${KVQ_BIN:-$root/build/harness/kvq}")
[ -x "$kvq" ] || { echo "sweep: $kvq is not built (bash scripts/build.sh)" >&2; exit 2; }
scenario=$(realpath "$scenario")
dir=$(realpath -m "${dir:-$root/results/slurm/$(basename "$scenario" .toml)-$(date -u +%Y%m%d-%H%M%S)}")
mkdir -p "$dir/logs"

# Array task i is shard i/N (0-based, as kvq run --shard counts).
array=$(sbatch --parsable --array="${shards:-0-$((n - 1))}" "${gres[@]}" \
  --output="$dir/logs/shard-%a.job-%A.out" "$@" \
  "$root/scripts/slurm/shard.sbatch" "$kvq" "$scenario" "$n" "$dir")
array=${array%%;*}  # --parsable prints "id;cluster" on a multi-cluster setup
# afterany, not afterok: a failed or cancelled task would leave an afterok merge pending
# forever (DependencyNeverSatisfied), and the failure would show nowhere in the results.
merge=$(sbatch --parsable --dependency="afterany:$array" --output="$dir/logs/merge.job-%j.out" \
  "$root/scripts/slurm/merge.sbatch" "$kvq" "$scenario" "$n" "$dir")
merge=${merge%%;*}
echo "sweep: shards job $array, merge job $merge -> $dir/kvq.db (logs in $dir/logs)"
