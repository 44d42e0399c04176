#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md): on a bare machine with PyTorch,
# Triton and CUDA (no mmcv, no internet), install the carried pure-Python
# wheels, then run the CUDA tests and benchmarks, each stage time-boxed
# (tools/gpu_check.py), in at most 8 minutes. Writes OUTDIR/report.json,
# OUTDIR/gpu_check.log and the benchmarks' JSON, and prints a summary.
#
#   tools/gpu_check.sh OUTDIR [--cpu-smoke] [--skip STAGE ...]
#
# Wheels: tools/gpu_wheels.sh puts them into work_dirs/gpu_wheels (carry
# that path); WHEELS=DIR overrides, PYTHON=... picks the interpreter.
set -uo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 OUTDIR [--cpu-smoke] [--skip STAGE ...]" >&2
    exit 2
fi
OUTDIR=$1
shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-$ROOT/work_dirs/gpu_wheels}
SITE=${GPU_CHECK_SITE:-/tmp/mmnorm_gpu_check_site}
mkdir -p "$OUTDIR"

if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    # --no-deps: the wheelhouse is the exact, minimal set (gpu_wheels.sh)
    if ! timeout 45 $PYTHON -m pip install -q --no-index --no-deps \
            --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$WHEELS"/*.whl >"$OUTDIR/pip.log" 2>&1; then
        echo "[gpu_check] installing the wheels from $WHEELS failed:" >&2
        cat "$OUTDIR/pip.log" >&2
        exit 1
    fi
    rm -f "$OUTDIR/pip.log"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    echo "[gpu_check] installed $(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE"
else
    echo "[gpu_check] no wheels in $WHEELS: using what is installed"
fi
if ! timeout 30 $PYTHON -c 'import cv2' >/dev/null 2>&1; then
    echo "[gpu_check] warning: cv2 does not import; mmengine's hooks need" \
        "it (tools/gpu_wheels.sh --opencv carries opencv-python-headless)" >&2
fi
# the stages' own limits add up to 460 s; this one catches the rest
LIMIT=480
case " $* " in *" --cpu-smoke "*) LIMIT=2400 ;; esac
exec timeout -k 10 "$LIMIT" $PYTHON "$ROOT/tools/gpu_check.py" "$OUTDIR" \
    --python "$PYTHON" "$@"
