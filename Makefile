# mmnorm: everything a newcomer needs is `make demo` and `make test`;
# both set up .venv/ first (see tools/setup_env.sh).
PY := .venv/bin/python

.PHONY: env demo benchmark gpu-check test test-slow lint docs

env:
	@bash tools/setup_env.sh

## main job: Mask R-CNN with SN on synthetic COCO, 2 CPU processes,
## COCO evaluation and the learned ratios (tools/demo.sh)
demo: env
	PYTHON=$(CURDIR)/$(PY) bash tools/demo.sh 2

## the layer benchmarks on the CPU (SN vs BatchNorm, GroupNorm,
## straightforward SN; SW vs BatchNorm, SN, straightforward SW)
benchmark: env
	@mkdir -p work_dirs
	$(PY) tools/analysis_tools/benchmark_norms.py --out work_dirs/benchmark_norms.json
	$(PY) tools/analysis_tools/benchmark_whitening.py --out work_dirs/benchmark_whitening.json

## on a GPU machine (torch + Triton + CUDA; see docs/gpu.md): CUDA tests
## and benchmarks into work_dirs/gpu_check
gpu-check:
	bash tools/gpu_check.sh work_dirs/gpu_check

lint: env
	$(PY) -m ruff check mmnorm tools tests

## documentation site (warnings are errors) -> docs/_build/html
docs: env
	$(PY) -m sphinx -q -W --keep-going -b html docs docs/_build/html

## default tests (slow ones excluded) after lint and the docs build; CI runs this
test: lint docs
	$(PY) -m pytest

## the slow tests too
test-slow: lint docs
	$(PY) -m pytest -m "slow or not slow"
