#!/usr/bin/env bash
# Download the pure-Python wheels that `import mmnorm` needs on the GPU
# machine (Python 3.12, torch + Triton + numpy + PyYAML + rich + matplotlib
# + opencv-python-headless already there; no mmcv, no internet) into
# work_dirs/gpu_wheels (git-ignored; name it in the device tool's carry).
#
#   tools/gpu_wheels.sh [--opencv] [DIR]
#
# mmengine 0.10.7 needs addict, termcolor, yapf (which needs platformdirs)
# besides what is there; --opencv also fetches opencv-python-headless
# (tens of MB) for a machine without cv2.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OPENCV=0
if [ "${1:-}" = "--opencv" ]; then OPENCV=1; shift; fi
DIR=${1:-$ROOT/work_dirs/gpu_wheels}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
mkdir -p "$DIR"
PURE="mmengine==0.10.7 addict==2.4.0 termcolor==3.3.0 yapf==0.43.0
      platformdirs==4.14.9"
# shellcheck disable=SC2086
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation py --abi none --platform any \
    -d "$DIR" $PURE
if [ "$OPENCV" = 1 ]; then
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 -d "$DIR" \
        opencv-python-headless==4.12.0.88
fi
ls -la "$DIR"
du -sh "$DIR"
