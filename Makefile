# mmbert — `make demo` and `make test` work on a fresh machine: they create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CACHE ?= $(HOME)/.cache/mmbert
export MMBERT_CACHE := $(CACHE)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-slow test-gpu bench bench-learning venv clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,onnx,scale]'
	# MDSWriter for the MDS tests: installed without the transformers<5 / numpy<2.2 pins it declares
	$(PIP) install -q --no-deps mosaicml-streaming==0.13.0
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/mmbert demo --out runs/demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow and not gpu" tests

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow tests

# `make test-gpu PY=python3`: the GPU tests with another interpreter (a GPU machine's own torch
# and transformers), without creating .venv; the files are named because other test modules
# import packages such a machine may lack. The whole GPU check: `bash benchmarks/gpu.sh OUTDIR`.
GPU_TESTS = $(shell grep -l 'pytest.mark.gpu' tests/test_*.py)
test-gpu: $(if $(filter command line,$(origin PY)),,$(VENV)/.installed)
	PYTHONPATH=src $(PY) -m pytest -q -s -m gpu $(GPU_TESTS)

bench: $(VENV)/.installed
	$(VENV)/bin/mmbert bench --out runs/bench

bench-learning: $(VENV)/.installed
	$(PY) benchmarks/bench_learning.py --out runs/bench_learning

clean:
	rm -rf runs build *.egg-info src/*.egg-info
