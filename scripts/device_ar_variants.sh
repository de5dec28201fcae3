#!/usr/bin/env bash
# Train AR-rewrite variants side by side on one GPU (from scratch, one process each), then export each one as a
# float16 asset and evaluate it; everything lands in $OUT/<variant>.tgz (asset, log, progress, evals).
#   OUT=/tmp/out RUNS=/tmp/runs BUDGET=380 bash scripts/device_ar_variants.sh
set -uo pipefail
OUT=${OUT:-runs/device}; RUNS=${RUNS:-runs}; BUDGET=${BUDGET:-380}; mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 HF_HUB_DISABLE_PROGRESS_BARS=1
{ nvidia-smi -L; python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } > "$OUT/env.txt" 2>&1
T0=$(date +%s)
train() { local name=$1; shift; python3 -m armt_viz.cli train --task ar-rewrite --out "$RUNS/$name" --time-budget "$BUDGET" "$@" > "$RUNS/$name.log" 2>&1; echo "$name rc=$? after $(( $(date +%s) - T0 ))s" >> "$OUT/env.txt"; }
# A: the recipe of issue 4 literally (fixed n per batch); B: same without the n=1 stage; D: B in float32
train A --curriculum 1,2,3,5,10,20,50 --steps 200,600,900,1400,1200,1200,2000 &
train B --curriculum 2,3,5,10,20,50 --steps 600,900,1400,1200,1200,2000 &
train D --curriculum 2,3,5,10,20,50 --steps 600,900,1400,1200,1200,2000 --no-bf16 --seed 1 &
# C: official --vary_n_segments (n ~ U{1..n_stage} per batch), without the n=1 stage
python3 -c "
import dataclasses, logging, sys; logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s')
from armt_viz.train import default_config, train
cfg = dataclasses.replace(default_config('ar-rewrite'), vary_n=True, curriculum=(2,3,5,10,20,50), steps=(600,900,1400,1200,1200,2000), time_budget=$BUDGET, seed=2)
train(cfg, '$RUNS/C')" > "$RUNS/C.log" 2>&1 &
wait
for v in A B C D; do
  ( python3 scripts/train_gpu.py export "$RUNS/$v" "$RUNS/$v/asset" > /dev/null 2>&1
    timeout 60 python3 scripts/model_card_evals.py --quick --ar "$RUNS/$v/asset" --out "$RUNS/$v/evals.json" --device cuda > "$RUNS/$v/evals.log" 2>&1
    cp "$RUNS/$v.log" "$RUNS/$v/train.log"
    tar czf "$OUT/$v.tgz" -C "$RUNS" "$v/asset" "$v/log.jsonl" "$v/evals.json" "$v/evals.log" "$v/train.log" "$v/checkpoint/progress.json" ) &
done
wait
echo "total $(( $(date +%s) - T0 ))s" >> "$OUT/env.txt"
cat "$OUT/env.txt"; for v in A B C D; do echo "== $v"; tail -c 400 "$RUNS/$v/evals.log"; grep -h '"exact_match"' "$RUNS/$v/log.jsonl" | tail -3; done
