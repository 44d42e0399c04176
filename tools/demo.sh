#!/usr/bin/env bash
# The main job: train Mask R-CNN R18-FPN with Switchable Normalization in
# backbone, neck and heads on synthetic COCO data with 2 CPU processes
# (gloo, through tools/dist_train.sh like a GPU user), evaluate it with the
# COCO metrics (tools/dist_test.sh) and show what the SN layers learned.
#   tools/demo.sh [PROCESSES]        (default 2; PYTHON overrides python,
#                                     WORK the output folder, PORT the port,
#                                     CONFIG another demo config, NUM_TRAIN
#                                     the training scenes, default 2400)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
NPROC=${1:-2}
CONFIG=${CONFIG:-configs/demo/mask-rcnn_r18-sn_fpn-sn_synthetic-coco.py}
DATA=data/synthetic_coco_demo
NUM_TRAIN=${NUM_TRAIN:-2400}
WORK=${WORK:-work_dirs/demo}
say() { printf '\033[1m[demo]\033[0m %s\n' "$*"; }

fail() {  # show the end of a failed step's log and stop
  tail -n 40 "$1" >&2
  echo "[demo] failed: $2 (full log: $1)" >&2
  exit 1
}

progress() {  # one short line per logged training interval, with the ETA
  local line pattern='Epoch\(train\) *(\[ *[0-9]+\]\[ *[0-9]+/[0-9]+\]).*eta: ([0-9:]+).* loss: ([0-9.]+)'
  while IFS= read -r line; do
    if [[ $line =~ $pattern ]]; then
      printf '[demo]   epoch %s  loss %s  eta %s\n' "${BASH_REMATCH[1]}" \
        "${BASH_REMATCH[3]}" "${BASH_REMATCH[2]}"
    fi
  done
}

say "1/4 synthetic COCO data in $DATA (seeded; generated once)"
$PYTHON -c "from mmnorm.datasets import ensure_synthetic_coco as e; e('$DATA', seed=0, num_train=$NUM_TRAIN, num_val=50, inside=True, max_occlusion=0.5, workers=$NPROC)"

say "2/4 training $CONFIG with $NPROC CPU processes (about 8 minutes on 2 cores)"
rm -rf "$WORK" && mkdir -p "$WORK"
# torch.distributed.run gives every process one thread (OMP_NUM_THREADS=1)
if ! PYTHON=$PYTHON PORT=${PORT:-29533} tools/dist_train.sh "$CONFIG" "$NPROC" \
        --work-dir "$WORK" 2>&1 | tee "$WORK/train.log" | progress; then
  fail "$WORK/train.log" "training"
fi
CKPT=$(cat "$WORK/last_checkpoint")

say "3/4 testing $CKPT with $NPROC processes (COCO bbox and segm metrics)"
PYTHON=$PYTHON PORT=${PORT:-29533} tools/dist_test.sh "$CONFIG" "$CKPT" "$NPROC" \
    --work-dir "$WORK" --out "$WORK/predictions.pkl" > "$WORK/test.log" 2>&1 \
  || fail "$WORK/test.log" "testing"
$PYTHON - "$WORK/test.log" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
found = dict(re.findall(r'coco/(bbox_mAP|segm_mAP|bbox_mAP_50|segm_mAP_50): '
                        r'([-0-9.]+)', text))
print(f"[demo]   bbox mAP@[.5:.95] {found['bbox_mAP']}  "
      f"(@.5 {found['bbox_mAP_50']})   segm mAP@[.5:.95] "
      f"{found['segm_mAP']}  (@.5 {found['segm_mAP_50']})")
EOF

say "4/4 what the SN layers learned"
$PYTHON tools/analysis_tools/plot_ratios.py "$WORK/sn_ratios.jsonl" --out-dir "$WORK/ratios" \
    --title "Mask R-CNN R18 SN (synthetic COCO)"
$PYTHON tools/analysis_tools/ratio_summary.py "$CKPT" | head -n 12 || true
say "done in $((SECONDS / 60)) min $((SECONDS % 60)) s: figures in $WORK/ratios/, full table: python tools/analysis_tools/ratio_summary.py $CKPT"
