#!/bin/bash
# Grade a batch on a Slurm cluster: an array of N shard jobs, then a merge job once they all succeeded.
#   delivery/slurm/submit.sh BATCH_DIR N_SHARDS [--gpu] [SBATCH_OPTION...]
# Environment: SEED (default: a random one, printed; every shard must use the same), OUT_DIR (default
# ./grading-<date>), PYTHON (default: python3 on the nodes' PATH), GRADE_ARGS (extra options of
# `python -m autograder grade`). Extra SBATCH_OPTIONs (--partition=..., --account=..., --time=...) go to
# the array and the merge job. Prints the two job ids; the merged reports land in OUT_DIR (grades.json,
# grades.csv, grades.xml, gradescope/).
set -euo pipefail
if [[ $# -lt 2 ]]; then
    sed -n '2,8p' "$0" >&2
    exit 2
fi
BATCH_DIR=$(realpath "$1"); N_SHARDS=$2; shift 2
SCRIPT=grade_array.sbatch
if [[ "${1:-}" == "--gpu" ]]; then SCRIPT=grade_array_gpu.sbatch; shift; fi
[[ -d "$BATCH_DIR" ]] || { echo "error: $BATCH_DIR is not a folder" >&2; exit 2; }
[[ "$N_SHARDS" =~ ^[1-9][0-9]*$ ]] || { echo "error: N_SHARDS must be a positive integer" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SEED=${SEED:-$(( (RANDOM << 15) | RANDOM ))}
OUT_DIR=$(realpath -m "${OUT_DIR:-grading-$(date +%Y%m%d-%H%M%S)}")
mkdir -p "$OUT_DIR"
EXPORT="ALL,REPO=$REPO,BATCH_DIR=$BATCH_DIR,N_SHARDS=$N_SHARDS,SEED=$SEED,OUT_DIR=$OUT_DIR"
array=$(sbatch --parsable --array="1-$N_SHARDS" --chdir="$OUT_DIR" --export="$EXPORT" "$@" "$HERE/$SCRIPT")
array=${array%%;*}  # --parsable prints "id;cluster" on multi-cluster setups
merge=$(sbatch --parsable --dependency="afterok:$array" --kill-on-invalid-dep=yes --chdir="$OUT_DIR" --export="$EXPORT" "$@" \
    "$HERE/merge.sbatch")
merge=${merge%%;*}
echo "seed $SEED; shards: job $array (array 1-$N_SHARDS, $SCRIPT); merge: job $merge; reports in $OUT_DIR"
echo "ARRAY_JOB=$array MERGE_JOB=$merge"
