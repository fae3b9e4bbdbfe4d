#!/usr/bin/env bash
# Hyper-parameter sweep for SASRec/BERT4Rec defaults, run once on a lent GPU machine (all configs in
# parallel, one process each, each with a wall-clock budget), results merged into $OUT/sweep.json.
#
#   needs: .gpu/data/{ml-1m/ml-1m.txt.gz,ml-100k/u.data} and .whl/ (polars) carried with the tree.
#   BUDGET=seconds per run (default 270)
#   ROUND=3: weight averaging (ema_decay) on ml-1m and over 5 seeds on ml-100k, with default configs,
#   plus benchmarks/quality.py rows (default configs) for the neural models on ml-1m and
#   amazon-beauty, each its own process (store: $OUT/quality.json, merged into results/ by hand).
#   ROUND=5: SASRec on ml-100k, 11 candidate configs x 5 seeds (one lane per config, seeds in
#   order, test tracked per epoch; candidates are judged on mean validation NDCG@10, not test),
#   plus two ml-1m runs toward the 0.190 stretch (learning rate 2e-3; 400 epochs), BUDGET each.
#   ROUND=6: checkpoint selection select_within_se=1 (the new SASRec default) on ml-100k for the
#   default and round 5's two best configs by validation (dropout 0.3; AdamW weight decay 0.1),
#   5 seeds each, all 15 runs at once, BUDGET each.
set -u
BUDGET=${BUDGET:-270}
OUT=${OUT:-/tmp/sweep_out}
mkdir -p "$OUT" /tmp/sweep
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src DYNREC_DATA_DIR=$PWD/.gpu/data PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
G="ce_chunk=16384 score_batch=2048 num_threads=1 epochs=400 patience=20"
run() {  # tag model dataset overrides...
  local tag=$1 model=$2 ds=$3; shift 3
  local sets=()
  for kv in $G "$@"; do sets+=(--set "$kv"); done
  python3 benchmarks/seq_transformers.py --model "$model" --dataset "$ds" --tag "$tag" --no-peak \
    --budget-s "$BUDGET" --out "/tmp/sweep/$tag.json" "${sets[@]}" >"/tmp/sweep/$tag.log" 2>&1 &
}
ROUND=${ROUND:-2}
runseq() {  # tag dataset budget overrides...: sasrec default config + overrides, test tracked per epoch
  local tag=$1 ds=$2 budget=$3; shift 3
  local sets=()
  for kv in num_threads=1 score_batch=2048 "$@"; do sets+=(--set "$kv"); done
  timeout "$((budget + 120))" python3 benchmarks/seq_transformers.py --model sasrec --dataset "$ds" \
    --tag "$tag" --no-peak --track-test --budget-s "$budget" --out "/tmp/sweep/$tag.json" "${sets[@]}" \
    >"/tmp/sweep/$tag.log" 2>&1
}
if [ "$ROUND" = 1 ]; then  # round 1 (before attn_dropout was split out; attention dropout = dropout)
run base          sasrec ml-1m
run drop05        sasrec ml-1m dropout=0.5
run ffn256h2      sasrec ml-1m ffn_dim=256 num_heads=2
run absolute      sasrec ml-1m positional=absolute
run gate          sasrec ml-1m long_term=gate
run stride        sasrec ml-1m window_stride=200
run lr2e3         sasrec ml-1m learning_rate=0.002
run lr2e3_stride  sasrec ml-1m learning_rate=0.002 window_stride=200 dropout=0.3
run bf16          sasrec ml-1m amp=bf16
run lr3e3         sasrec ml-1m learning_rate=0.003
run bert_ml1m     bert4rec ml-1m
run sas_ml100k    sasrec ml-100k
run bert_ml100k   bert4rec ml-100k
elif [ "$ROUND" = 3 ]; then
runseq m_base ml-1m "$BUDGET" &
runseq m_ema99 ml-1m "$BUDGET" ema_decay=0.99 &
runseq m_ema995 ml-1m "$BUDGET" ema_decay=0.995 &
runseq m_ema998 ml-1m "$BUDGET" ema_decay=0.998 &
for e in 0 0.99 0.998; do
  ( for sd in 0 1 2 3 4; do runseq "k_ema${e}_s$sd" ml-100k "$((BUDGET / 3))" "ema_decay=$e" "seed=$sd"; done ) &
done
mkdir -p /tmp/quality
qual() {  # dataset models
  OMP_NUM_THREADS=1 timeout "$((BUDGET + 120))" python3 benchmarks/quality.py --datasets "$1" \
    --models "$2" --store /tmp/quality/quality.json >"/tmp/quality/$1_${2//,/_}.log" 2>&1 &
}
for ds in ml-1m amazon-beauty; do
  for m in mf,bpr mlp gru4rec caser bert4rec; do qual "$ds" "$m"; done
done
qual amazon-beauty sasrec
elif [ "$ROUND" = 4 ]; then  # round 3's leftovers with less contention: ml-1m to convergence + rows
runseq m4_base ml-1m "$BUDGET" &
runseq m4_ema995 ml-1m "$BUDGET" ema_decay=0.995 &
mkdir -p /tmp/quality
for dm in ml-1m:bert4rec amazon-beauty:bert4rec amazon-beauty:sasrec amazon-beauty:bpr; do
  OMP_NUM_THREADS=1 timeout "$((BUDGET + 120))" python3 benchmarks/quality.py --datasets "${dm%%:*}" \
    --models "${dm#*:}" --store /tmp/quality/quality.json >"/tmp/quality/${dm/:/_}.log" 2>&1 &
done
elif [ "$ROUND" = 5 ]; then
runseq m5_lr2e3 ml-1m "$BUDGET" learning_rate=0.002 epochs=400 &
runseq m5_base400 ml-1m "$BUDGET" epochs=400 &
lane() {  # name overrides...: one config over 5 seeds, one after another
  local name=$1; shift
  for sd in 42 1 2 3 4; do runseq "k5_${name}_s$sd" ml-100k "${KBUDGET:-100}" "seed=$sd" "$@"; done
}
lane base &
lane len50 max_len=50 &
lane drop05 dropout=0.5 attn_dropout=0.5 &
lane drop03 dropout=0.3 attn_dropout=0.3 &
lane lr2e3 learning_rate=0.002 &
lane bs128 batch_size=128 &
lane d128 embedding_dim=128 ffn_dim=512 &
lane l1 num_layers=1 &
lane wd01 optimizer=adamw weight_decay=0.1 &
lane gap1 valid_gap=1 &
lane gate long_term=gate &
elif [ "$ROUND" = 6 ]; then
for sd in 42 1 2 3 4; do
  runseq "k6_base_s$sd" ml-100k "$BUDGET" "seed=$sd" &
  runseq "k6_drop03_s$sd" ml-100k "$BUDGET" "seed=$sd" dropout=0.3 attn_dropout=0.3 &
  runseq "k6_wd01_s$sd" ml-100k "$BUDGET" "seed=$sd" optimizer=adamw weight_decay=0.1 &
done
else  # round 2: candidates for the default (ffn 256, 2 heads, no attention dropout, bf16) + ablations
C="ffn_dim=256 num_heads=2 attn_dropout=0 amp=bf16"
run A_lr1e3       sasrec ml-1m $C
run B_lr2e3       sasrec ml-1m $C learning_rate=0.002
run C_lr2e3_strd  sasrec ml-1m $C learning_rate=0.002 window_stride=200
run D_cos50       sasrec ml-1m $C learning_rate=0.002 schedule=cosine epochs=50 warmup_steps=100
run D2_cos40_strd sasrec ml-1m $C learning_rate=0.003 schedule=cosine epochs=40 warmup_steps=100 window_stride=200
run E_drop01      sasrec ml-1m $C dropout=0.1
run F_drop03      sasrec ml-1m $C dropout=0.3
run G_absolute    sasrec ml-1m $C positional=absolute
run H_gate        sasrec ml-1m $C long_term=gate
run M_len100      sasrec ml-1m $C max_len=100
run bert_ml1m     bert4rec ml-1m amp=bf16 learning_rate=0.002
run sas_ml100k    sasrec ml-100k $C
run bert_ml100k   bert4rec ml-100k amp=bf16
fi
wait
python3 - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
runs = {}
for p in sorted(pathlib.Path("/tmp/sweep").glob("*.json")):
    runs[p.stem] = json.loads(p.read_text())
(out / "sweep.json").write_text(json.dumps(runs, indent=1))
for k, r in runs.items():
    print(k, r["test"], "best", r["best_epoch"], "/", r["epochs_run"], "t_best", round(r["seconds_to_best"] or -1), "s/ep", round(r["s_per_epoch_train"], 2), "budget_hit", r["budget_hit"])
EOF
tar czf "$OUT/logs.tgz" -C /tmp/sweep .
if [ -d /tmp/quality ]; then cp /tmp/quality/quality.json "$OUT/" 2>/dev/null; tar czf "$OUT/quality_logs.tgz" -C /tmp/quality .; fi
