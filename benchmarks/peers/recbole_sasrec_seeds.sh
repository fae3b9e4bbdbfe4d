#!/usr/bin/env bash
# RecBole 1.2.1 SASRec on ml-100k with more seeds than RecBole's default 2020, so that the
# side-by-side comparison with dynrec's 5 seeds compares means, not one lucky or unlucky run.
# Same settings as run_peers.sh ml-100k:SASRec:1500 (the 25-minute budget of the issue), only
# `seed` differs; each checkpoint is re-scored with seen items masked (recbole_masked_eval.py).
# Writes benchmarks/peers/results/ml-100k/SASRec_seedN.json and SASRec-masked_seedN.json.
# EPOCHS=N instead trains exactly N epochs (BUDGET then only a safety cap): use it when the machine
# is not quiet, so that sharing the CPU costs RecBole time but not epochs (alone, RecBole fits 10-11
# epochs into the 25 minutes).
#
# usage: SEEDS="1 2" benchmarks/peers/recbole_sasrec_seeds.sh   (needs shared/peers/setup.sh; ~25 min a seed)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=paths.sh
. "$HERE/paths.sh"
SEEDS=${SEEDS:-1 2}
BUDGET=${BUDGET:-1500}
EPOCHS=${EPOCHS:-}
NICE=${NICE:-0}
res=$HERE/results/ml-100k
mkdir -p "$res"
for seed in $SEEDS; do
    runs=$PEERS_DIR/runs/ml-100k-seed$seed
    rm -rf "$runs/saved"
    mkdir -p "$runs"
    echo "== $(date -Is) RecBole SASRec ml-100k seed $seed budget $BUDGET s"
    RUNS=$runs nice -n "$NICE" "$SHARED_PEERS/run_recbole_one.sh" SASRec --dataset ml-100k \
        --data-path "$SHARED_DATA" --time-budget "$BUDGET" --set "seed=$seed" \
        ${EPOCHS:+--epochs "$EPOCHS" --stopping-step "$EPOCHS"}
    cp "$runs/SASRec.json" "$res/SASRec_seed$seed.json"
    cp "$runs/SASRec.time" "$res/SASRec_seed$seed.time"
    ckpt=$(ls "$runs"/saved/SASRec-*.pth | tail -n 1)
    (cd "$runs" && "$PEERS_DIR/venv/bin/python" "$HERE/recbole_masked_eval.py" \
        --model-file "$ckpt" --out "$res/SASRec-masked_seed$seed.json")
done
