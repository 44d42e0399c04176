# mmnorm: everything a newcomer needs is `make demo` and `make test`;
# both set up .venv/ first (see tools/setup_env.sh).
PY := .venv/bin/python

.PHONY: env demo benchmark test test-slow lint docs

env:
	@bash tools/setup_env.sh

## main job: Mask R-CNN with SN on synthetic COCO, 2 CPU processes,
## COCO evaluation and the learned ratios (tools/demo.sh)
demo: env
	PYTHON=$(CURDIR)/$(PY) bash tools/demo.sh 2

## the layer benchmark (SN vs BatchNorm, GroupNorm, straightforward SN)
benchmark: env
	@mkdir -p work_dirs
	$(PY) tools/analysis_tools/benchmark_norms.py --out work_dirs/benchmark_norms.json

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
