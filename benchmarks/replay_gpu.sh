#!/usr/bin/env bash
# The neural half of the replay benchmark (sasrec, gru4rec), run once on a lent GPU machine:
# ml-1m (last 10 events per user), ml-100k (time cut at 80%) and the synthetic drift data, four
# modes each, jobs in parallel. Stores come back as $OUT/*.json (fold them in here with
# `python benchmarks/replay.py --merge FILE`), trained models as $OUT/models.tgz.
#
#   needs: .gpu/data/{ml-1m/ml-1m.txt.gz,ml-100k/u.data} and .whl/ (polars) carried with the tree.
#   SMOKE=1: tiny settings (a CPU dry run of the whole script).
set -u
OUT=${OUT:-/tmp/replay_gpu_out}
BUDGET=${BUDGET:-520}
mkdir -p "$OUT" /tmp/rg
if [ -d .whl ] && ! python3 -c "import polars" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export DYNREC_DATA_DIR=${DYNREC_DATA_DIR:-$PWD/.gpu/data} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"
if [ "${SMOKE:-0}" = 1 ]; then
  SYNTH="--users 80 --items 60 --groups 4 --events-per-user 14"
  S="--set sasrec.epochs=1 --set gru4rec.epochs=1 --set sasrec.max_len=20 --set gru4rec.max_len=20"
  ML1M="--last-n 2"
else
  SYNTH=""
  S=""
  ML1M=""
fi
$PY -m dynrec.cli.main data synth --out /tmp/rg/synth $SYNTH --json >"$OUT/synth_summary.json" || exit 1
job() {  # tag dataset extra-args...
  local tag=$1 ds=$2; shift 2
  timeout "$BUDGET" $PY benchmarks/replay.py --dataset "$ds" --store "$OUT/$tag.json" --cache /tmp/rg/cache \
    --plot-dir /tmp/rg/plots $S "$@" >"/tmp/rg/$tag.log" 2>&1
  echo "$tag exit $?" >>/tmp/rg/status
}
job ml1m_sasrec ml-1m --models sasrec --n-updates 3 $ML1M &
job ml1m_gru4rec ml-1m --models gru4rec --n-updates 3 $ML1M &
job ml100k ml-100k --models sasrec,gru4rec &
job synth /tmp/rg/synth --models sasrec,gru4rec &
wait
cat /tmp/rg/status
for f in /tmp/rg/*.log; do echo "== $f"; grep -v " INFO " "$f" | tail -n 25; done >"$OUT/logs.txt"
grep -h "HR@10" /tmp/rg/*.log | grep -v INFO
tar czf "$OUT/models.tgz" -C /tmp/rg cache 2>/dev/null
ls -la "$OUT"
