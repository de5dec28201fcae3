#!/usr/bin/env bash
# Train the stream specimen family (issue 13) side by side on one GPU, one process per variant, then export
# each as a float16 asset and evaluate it (scripts/specimen_evals.py: EM at 16..1024 segments with and without
# memory, EM by stream position over 1M tokens). Results land in
# $OUT/<variant>.tgz (asset, log, progress, evals) and $OUT/summary.txt.
#   OUT=/tmp/out RUNS=/tmp/runs BUDGET=420 VARIANTS="baseline no-gamma gate half-dmem no-delta" bash scripts/device_specimens.sh
# A variant whose RUNS folder already has a checkpoint resumes from it (a second call on a warm machine).
# PAIRS (default 16,64,256,1024) and LONG_TOKENS (default 1000000) set the evaluation's stream lengths.
set -uo pipefail
OUT=${OUT:-runs/device}; RUNS=${RUNS:-runs/specimens}; BUDGET=${BUDGET:-420}
VARIANTS=${VARIANTS:-"baseline no-gamma gate half-dmem no-delta"}; EVAL_SAMPLES=${EVAL_SAMPLES:-64}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 HF_HUB_DISABLE_PROGRESS_BARS=1
{ nvidia-smi -L; lscpu | grep 'Model name'; python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } > "$OUT/summary.txt" 2>&1
T0=$(date +%s)
for v in $VARIANTS; do
  name=${v%%:*}; seed=${v#*:}; [ "$seed" = "$v" ] && seed=0
  RES=""; [ -f "$RUNS/$v/checkpoint/progress.json" ] && RES="--resume"
  ( python3 -m armt_viz.cli train --task stream --variant "$name" --seed "$seed" --out "$RUNS/$v" \
      --time-budget "$BUDGET" $RES >> "$RUNS/$v.log" 2>&1
    echo "$v train rc=$? after $(( $(date +%s) - T0 ))s" >> "$OUT/summary.txt"
    python3 scripts/train_gpu.py export "$RUNS/$v" "$RUNS/$v/asset" > "$RUNS/$v/export.log" 2>&1
    timeout "${EVAL_TIMEOUT:-230}" python3 scripts/specimen_evals.py "$RUNS/$v/asset" --out "$RUNS/$v/evals.json" \
      --device cuda --samples "$EVAL_SAMPLES" --long-tokens "${LONG_TOKENS:-1000000}" --pairs "${PAIRS:-16,64,256,1024}" > "$RUNS/$v/evals.err" 2>&1
    cp "$RUNS/$v.log" "$RUNS/$v/train.log"
    tar czf "$OUT/$v.tgz" -C "$RUNS" "$v/asset" "$v/log.jsonl" "$v/evals.json" "$v/evals.err" "$v/train.log" \
      "$v/checkpoint/progress.json" 2>/dev/null ) &
done
wait
echo "total $(( $(date +%s) - T0 ))s" >> "$OUT/summary.txt"
for v in $VARIANTS; do
  { echo "== $v"; grep -h '"exact_match"' "$RUNS/$v/log.jsonl" | tail -4; python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps({k: d.get(k) for k in ('em', 'em_ablated')})); print(d['long']['segment'])" "$RUNS/$v/evals.json"; tail -c 300 "$RUNS/$v/evals.err"; tail -c 600 "$RUNS/$v.log"; } >> "$OUT/summary.txt" 2>&1
done
cat "$OUT/summary.txt"
