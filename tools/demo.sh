#!/usr/bin/env bash
# The main job: train Mask R-CNN R50-FPN with Switchable Normalization on
# synthetic COCO data with 2 CPU processes (gloo), evaluate it with the COCO
# metrics, and show what the SN layers learned (figures + table).
#   tools/demo.sh [PROCESSES]        (default 2; PYTHON overrides python)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
NPROC=${1:-2}
CONFIG=configs/demo/mask-rcnn_r50-sn_fpn_synthetic-coco.py
WORK=work_dirs/demo
say() { printf '\033[1m[demo]\033[0m %s\n' "$*"; }

say "1/4 synthetic COCO data in data/synthetic_coco (seeded; reused if present)"
$PYTHON -c "from mmnorm.datasets import ensure_synthetic_coco as e; e('data/synthetic_coco', seed=0, num_train=16, num_val=8)"

run() {  # run a step, keep its log, show it if the step fails
  local log=$1; shift
  if ! "$@" > "$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "[demo] failed: $* (full log: $log)" >&2
    exit 1
  fi
}

say "2/4 training $CONFIG with $NPROC CPU processes (a few minutes)"
rm -rf "$WORK" && mkdir -p "$WORK"
PYTHON=$PYTHON PORT=${PORT:-29533} run "$WORK/train.log" \
    tools/dist_train.sh "$CONFIG" "$NPROC" --work-dir "$WORK"
grep -E "Epoch\(train\).*loss:" "$WORK/train.log" | sed 's/^.*INFO - //' | cut -c1-150 | tail -n 4 || true
CKPT="$WORK/epoch_3.pth"

say "3/4 testing $CKPT (COCO bbox and segm metrics)"
run "$WORK/test.log" $PYTHON tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK" \
    --out "$WORK/predictions.pkl"
grep -E "Epoch\(test\).*coco/" "$WORK/test.log" | sed 's/^.*INFO - //' || true

say "4/4 what the SN layers learned"
$PYTHON tools/analysis_tools/plot_ratios.py "$WORK/sn_ratios.jsonl" --out-dir "$WORK/ratios" \
    --title "Mask R-CNN SN (synthetic)"
$PYTHON tools/analysis_tools/ratio_summary.py "$CKPT" | head -n 12 || true
say "done: figures in $WORK/ratios/, full table: python tools/analysis_tools/ratio_summary.py $CKPT"
