# mmnorm: everything a newcomer needs is `make benchmark` and `make test`;
# both set up .venv/ first (see tools/setup_env.sh).
PY := .venv/bin/python

.PHONY: env benchmark test test-slow lint

env:
	@bash tools/setup_env.sh

## main job: the layer benchmark (SN vs BatchNorm, GroupNorm, straightforward SN)
benchmark: env
	@mkdir -p work_dirs
	$(PY) tools/analysis_tools/benchmark_norms.py --out work_dirs/benchmark_norms.json

lint: env
	$(PY) -m ruff check mmnorm tools tests

## default tests (slow ones excluded); CI runs this
test: lint
	$(PY) -m pytest

## the slow tests too
test-slow: lint
	$(PY) -m pytest -m "slow or not slow"
