#!/usr/bin/env bash
# Create .venv/ in the repository and install mmnorm's pinned stack into it:
# torch 2.13.0 (CPU build), mmengine, mmcv with compiled ops (built from
# source), mmdet, mmsegmentation, mmaction2, test and docs tools, and
# mmnorm itself in editable mode. Safe to run again: finished steps are skipped in seconds.
#
#   bash tools/setup_env.sh          (what `make env` runs)
#   PYTHON=python3.11 bash tools/setup_env.sh
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
REQ="$ROOT/requirements"
STAMP="$VENV/.mmnorm-stack"
STEP="start"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
fail() {
  printf '\033[31m[setup] FAILED at step: %s\033[0m\n' "$STEP" >&2
  printf '[setup] Fix the error above and run the same command again; finished steps are skipped.\n' >&2
}
trap fail ERR

LOG="$ROOT/.venv-setup.log"
pip_install() {
  # pip's own output goes to the log; it is shown if the step fails.
  if ! "$PY" -m pip install --disable-pip-version-check -c "$REQ/constraints.txt" "$@" >>"$LOG" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$LOG" | tail -n 40 >&2
    printf '[setup] full pip log: %s\n' "$LOG" >&2
    return 1
  fi
}

# A hash of everything that decides what gets installed: a second run with
# the same requirements only re-checks that the imports still work.
want=$(cat "$REQ"/*.txt setup.py tools/setup_env.sh | sha256sum | cut -d' ' -f1)

STEP="create the virtual environment"
: >"$LOG"
if [ ! -x "$PY" ]; then
  say "creating $VENV with ${PYTHON:-python3}"
  "${PYTHON:-python3}" -m venv "$VENV"
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  STEP="check the installed stack"
  if "$PY" -c "import mmcv.ops, mmdet.models, mmseg.models, mmnorm, mmnorm.mmaction" 2>/dev/null; then
    say "environment is up to date ($VENV)"
    exit 0
  fi
  say "environment is stale; reinstalling what is missing"
fi

STEP="install pip, setuptools and wheel"
say "installing build tools (setuptools<82 keeps pkg_resources for mmcv)"
pip_install --upgrade pip
pip_install -r "$REQ/build.txt"

STEP="install torch 2.13.0 (CPU build)"
say "installing torch 2.13.0, CPU build"
pip_install torch==2.13.0 numpy

STEP="install mmengine 0.10.7"
say "installing mmengine"
pip_install mmengine==0.10.7

STEP="build mmcv 2.1.0 with compiled ops"
if "$PY" -c "import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != '2.1.0')" 2>/dev/null; then
  say "mmcv 2.1.0 with ops is already installed"
else
  say "building mmcv 2.1.0 with compiled ops from source."
  say "this takes about 30 minutes on 2 cores the first time; pip caches the wheel, later installs take seconds"
  MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" pip_install --no-build-isolation mmcv==2.1.0
fi

STEP="install mmdet 3.3.0 and mmsegmentation 1.2.2"
say "installing mmdet and mmsegmentation"
pip_install mmdet==3.3.0 mmsegmentation==1.2.2 -r "$REQ/mmseg_deps.txt"

STEP="install mmaction2 1.2.0"
# --no-deps: see requirements/mmaction2_deps.txt for why.
say "installing mmaction2 (without opencv-contrib-python: cv2 comes from opencv-python alone)"
pip_install -r "$REQ/mmaction2_deps.txt"
pip_install --no-deps mmaction2==1.2.0

STEP="install test and docs tools"
say "installing test and docs tools"
pip_install -r "$REQ/tests.txt" -r "$REQ/docs.txt"

STEP="install mmnorm in editable mode"
say "installing mmnorm (editable)"
pip_install --no-deps --no-build-isolation -e "$ROOT"

STEP="build mmnorm's CPU kernel"
# Compiled against this torch into build/mmnorm_ops/ (git-ignored); mmnorm
# would otherwise build it on first use. Without a compiler mmnorm runs its
# composed PyTorch path, so a failure here is not fatal.
say "building mmnorm's CPU kernel (mmnorm/ops/csrc, about a minute the first time)"
"$PY" -c "from mmnorm.ops import _kernel; _kernel.load(strict=True)" >>"$LOG" 2>&1 \
  || say "could not build mmnorm's CPU kernel (see $LOG); mmnorm uses its slower composed path"

STEP="verify the stack"
"$PY" - <<'PY'
import torch, mmcv, mmcv.ops, mmengine, mmdet, mmseg, cv2
import mmdet.models, mmseg.models, mmnorm, mmnorm.mmaction, mmaction
assert torch.__version__.startswith('2.13.0') and torch.version.cuda is None, torch.__version__
print(f'[setup] torch {torch.__version__}, mmengine {mmengine.__version__}, mmcv {mmcv.__version__} (ops), '
      f'mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, mmaction2 {mmaction.__version__}, '
      f'cv2 {cv2.__version__}, mmnorm {mmnorm.__version__}')
PY
echo "$want" > "$STAMP"
say "done: activate with 'source .venv/bin/activate'"
