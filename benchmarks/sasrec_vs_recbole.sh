#!/usr/bin/env bash
# SASRec on ml-100k, dynrec vs RecBole 1.2.1, side by side: one after the other on this machine in
# one session, each alone on it (nothing else running), same priority, 2 threads each (RecBole's
# script pins 2), on the same temporal leave-one-out split. RecBole gets the issue's 25-minute
# budget (--time-budget 1500).
# Writes benchmarks/results/sasrec_ml-100k_side_by_side_${VARIANT}_seedN.json (ours, one per seed in
# SEEDS; VARIANT names the default config it measured: ema = ema_decay 0.995, sel = + dropout by size
# and select_within_se 1), copies RecBole's record to benchmarks/peers/results/ml-100k/SASRec.json, and prints the
# comparison (side_by_side_table.py). RECBOLE=0 skips re-running RecBole (25 min) and compares with
# its stored record.
#
# usage: DYNREC_DATA_DIR=../shared/data benchmarks/sasrec_vs_recbole.sh   (needs shared/peers/setup.sh)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
BUDGET=${BUDGET:-1500}
SEEDS=${SEEDS:-42 1 2 3 4}
VARIANT=${VARIANT:-sel}
cd "$REPO"
for seed in $SEEDS; do
  echo "== $(date -Is) dynrec sasrec seed $seed"
  "$PY" benchmarks/seq_transformers.py --model sasrec --dataset ml-100k --track-test --no-peak --threads 2 \
    --set "seed=$seed" --set progress=false --tag side-by-side-with-recbole \
    --out "benchmarks/results/sasrec_ml-100k_side_by_side_${VARIANT}_seed$seed.json"
done
if [ "${RECBOLE:-1}" = 1 ]; then NICE=0 benchmarks/peers/run_peers.sh "ml-100k:SASRec:$BUDGET"; fi
"$PY" benchmarks/side_by_side_table.py
