#!/usr/bin/env bash
# Run peer baselines (RecBole 1.2.1, implicit 0.7.3) with the shared scripts in shared/peers,
# one job per argument, in order, and copy each JSON record into benchmarks/peers/results/DATASET/.
#
# usage: benchmarks/peers/run_peers.sh JOB [JOB ...]
#   JOB = DATASET:MODEL[:TIME_BUDGET_S]
#   DATASET = ml-100k (shared/data/ml-100k/ml-100k.inter) | ml-1m | amazon-beauty
#             (the latter two from prepare_atomic.py, in $PEERS_DIR/data)
#   MODEL   = a RecBole model name (Pop, ItemKNN, BPR, SASRec, ...) or "implicit" (ALS + BPR)
# e.g.  benchmarks/peers/run_peers.sh ml-100k:Pop ml-100k:BPR ml-100k:implicit ml-1m:SASRec:1500
#
# Needs the venv from shared/peers/setup.sh. Raw run folders (RecBole logs, checkpoints, stdout,
# /usr/bin/time output) stay in $PEERS_DIR/runs/DATASET; nothing but JSON/timing records enters the repo.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=paths.sh
. "$HERE/paths.sh"
NICE=${NICE:-10}

data_path() {  # folder holding NAME/NAME.inter
    case $1 in
        ml-100k) echo "$SHARED_DATA" ;;
        *) echo "$PEERS_DIR/data" ;;
    esac
}

for job in "$@"; do
    IFS=: read -r ds model budget <<< "$job"
    dp=$(data_path "$ds")
    [ -f "$dp/$ds/$ds.inter" ] || { echo "missing $dp/$ds/$ds.inter (run prepare_atomic.py)" >&2; exit 1; }
    runs=$PEERS_DIR/runs/$ds
    res=$HERE/results/$ds
    mkdir -p "$runs" "$res"
    echo "== $(date -Is) $ds $model ${budget:+budget $budget s}"
    if [ "$model" = implicit ]; then
        # same leave-one-out split as RecBole; verified pair-for-pair against a RecBole split dump
        # when one exists (written by the first RecBole job on the dataset, with --dump-split)
        check=()
        [ -f "$runs/split.npz" ] && check=(--check-split "$runs/split.npz")
        (cd "$runs" && /usr/bin/time -v -o implicit.time nice -n "$NICE" "$PEERS_DIR/venv/bin/python" \
            "$SHARED_PEERS/implicit_run.py" --inter "$dp/$ds/$ds.inter" "${check[@]}" \
            --out implicit.json > implicit.stdout 2> implicit.stderr)
        tail -n 4 "$runs/implicit.stdout"
        cp "$runs/implicit.json" "$runs/implicit.time" "$res/"
    else
        extra=()
        [ -n "${budget:-}" ] && extra+=(--time-budget "$budget")
        # the first RecBole job on a dataset dumps its split, to verify implicit's split against it
        [ -f "$runs/split.npz" ] || extra+=(--dump-split "$runs/split.npz")
        RUNS=$runs nice -n "$NICE" "$SHARED_PEERS/run_recbole_one.sh" "$model" \
            --dataset "$ds" --data-path "$dp" "${extra[@]}"
        cp "$runs/$model.json" "$runs/$model.time" "$res/"
    fi
done
