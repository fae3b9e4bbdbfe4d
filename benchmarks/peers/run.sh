#!/usr/bin/env bash
# Run peer baselines (RecBole 1.2.1, implicit 0.7.3) on dynrec's split, one job per argument, and add
# each result to benchmarks/results/peers.json (then: python -m benchmarks.pages).
#
# usage: bash benchmarks/peers/run.sh JOB [JOB ...]      (from the repository root)
#   JOB = DATASET:MODEL[:TIME_BUDGET_S]
#   DATASET = ml-100k ($DYNREC_DATA_DIR/ml-100k/ml-100k.inter) | ml-1m | amazon-beauty | ml-100k-pos
#             (the latter from prepare_atomic.py, in $PEERS_DIR/data)
#   MODEL   = a RecBole model name (Pop, ItemKNN, BPR, SASRec, GRU4Rec, ...) or "implicit" (ALS + BPR)
#   SEED=N  RecBole seed (default 2020). Sequential RecBole models are re-scored with seen items masked.
# e.g.  bash benchmarks/peers/run.sh ml-100k:Pop ml-100k:implicit ml-100k:SASRec:1500
#
# Needs the venv from benchmarks/peers/setup.sh. Raw run folders (logs, checkpoints, GNU time output)
# stay in $PEERS_DIR/runs/DATASET; only the metrics enter the repository.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DATA=${DYNREC_DATA_DIR:-$REPO/../shared/data}
export PEERS_DIR=${PEERS_DIR:-$HOME/.cache/dynrec-peers}
PY=$PEERS_DIR/venv/bin/python
REPO_PY=${REPO_PY:-$REPO/.venv/bin/python}
NICE=${NICE:-10}
SEED=${SEED:-2020}

for job in "$@"; do
    IFS=: read -r ds model budget <<< "$job"
    case $ds in ml-100k) dp=$DATA ;; *) dp=$PEERS_DIR/data ;; esac
    [ -f "$dp/$ds/$ds.inter" ] || { echo "missing $dp/$ds/$ds.inter (run prepare_atomic.py)" >&2; exit 1; }
    runs=$PEERS_DIR/runs/$ds
    mkdir -p "$runs"
    cmd="bash benchmarks/peers/run.sh $job"
    [ "$SEED" = 2020 ] || cmd="SEED=$SEED $cmd"
    echo "== $(date -Is) $ds $model ${budget:+budget $budget s}"
    if [ "$model" = implicit ]; then
        # the same leave-one-out split as RecBole's, checked pair by pair against its dump when present
        check=()
        [ -f "$runs/split.npz" ] && check=(--check-split "$runs/split.npz")
        (cd "$runs" && /usr/bin/time -v -o implicit.time nice -n "$NICE" "$PY" "$HERE/implicit_subset.py" \
            --inter "$dp/$ds/$ds.inter" "${check[@]}" --out implicit.json > implicit.stdout 2> implicit.stderr)
        (cd "$REPO" && "$REPO_PY" -m benchmarks.peers.record "$ds" implicit "$runs/implicit.json" --command "$cmd")
        continue
    fi
    name=$model; [ "$SEED" = 2020 ] || name=${model}_seed$SEED
    extra=(--set "seed=$SEED")
    [ -n "${budget:-}" ] && extra+=(--time-budget "$budget")
    # the first RecBole job on a dataset dumps its split, to check implicit's split against it
    [ -f "$runs/split.npz" ] || extra+=(--dump-split "$runs/split.npz")
    (cd "$runs" && /usr/bin/time -v -o "$name.time" nice -n "$NICE" "$PY" "$HERE/recbole_run.py" \
        --model "$model" --out "$name.json" --dataset "$ds" --data-path "$dp" "${extra[@]}" \
        > "$name.stdout" 2> "$name.stderr")
    masked=()
    case $model in SASRec|GRU4Rec|BERT4Rec|Caser)
        ckpt=$(cd "$runs" && ls -t saved/"$model"-*.pth | head -n 1)  # the checkpoint this run just saved
        (cd "$runs" && "$PY" "$HERE/recbole_masked_eval.py" --model-file "$ckpt" --out "$name-masked.json")
        masked=(--masked "$runs/$name-masked.json") ;;
    esac
    (cd "$REPO" && "$REPO_PY" -m benchmarks.peers.record "$ds" "$model" "$runs/$name.json" "${masked[@]}" --command "$cmd")
done
