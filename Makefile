# Two commands set everything up: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-all test-gpu demo bench bench-gpu bench-gpu-smoke bench-gpu-quick bench-gpu-quick-smoke clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test,export,openvino,tensorboard]'
	touch $(STAMP)

install: $(STAMP)

# two pytest-xdist workers (one compute thread each), test files kept whole (their exports are shared):
# 1.5x faster than one process on 2 cores (docs/benchmarks.md, "The test suite")
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

demo: $(STAMP)
	$(VENV)/bin/drmm demo

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu

# make bench: the benchmarks of the device present (CPU set, or the quick GPU set with CUDA).
# make bench-gpu: everything of issue 13 on a GPU (about 25 min; a device call runs one
# part: bash benchmarks/gpu_suite.sh 1|2|3). bench-gpu-smoke: a tiny dry run of it on any machine.
# make bench-gpu-quick: the GPU figures in one short run (issue 27, about 6.5 min), then
# `python benchmarks/gpu_report.py bench_out` writes them into docs/benchmarks.md.
# bench-gpu-quick-smoke: its CPU dry run (report printed only: not GPU figures).
bench: $(STAMP)
	$(PY) benchmarks/run_all.py

bench-gpu: $(STAMP)
	PYTHON=$(PY) bash benchmarks/gpu_suite.sh all

bench-gpu-smoke: $(STAMP)
	SMOKE=1 PYTHON=$(PY) bash benchmarks/gpu_suite.sh all

bench-gpu-quick: $(STAMP)
	PYTHON=$(PY) bash benchmarks/gpu_suite.sh quick

bench-gpu-quick-smoke: $(STAMP)
	SMOKE=1 PYTHON=$(PY) bash benchmarks/gpu_suite.sh quick

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
