# Two entry points, both usable on a fresh clone: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.segstudy-installed
STORAGE ?= $(CURDIR)/studies

.PHONY: setup demo test test-fast reference-results bench bench-input bench-step bench-overhead bench-read \
	bench-augment bench-stream \
	bench-study-wall gpu-kit gpu-dry-run

setup: $(STAMP)

# torch and torchvision first, pinned to the releases this project is tested with
# (they come from local disk on our machines); then the package and its test extra.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# A small study on generated data with an embedded local Ray, then its report.
demo: $(STAMP)
	name=smoke-$$(date +%Y%m%d-%H%M%S) && \
	$(VENV)/bin/study run search_spaces/smoke.yaml --storage $(STORAGE) --name $$name && \
	$(VENV)/bin/study report $$name --storage $(STORAGE)

test: $(STAMP)
	$(PY) -m pytest -q

# Everything but the end-to-end Ray tests.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The committed reference outputs in results/: each small study run afresh, then its report and export.
REFERENCE_STORAGE := $(CURDIR)/.cache/reference-studies
reference-results: $(STAMP)
	rm -rf $(REFERENCE_STORAGE)
	set -e; for spec in smoke smoke_search; do \
	  rm -rf results/$$spec; \
	  $(VENV)/bin/study run search_spaces/$$spec.yaml --storage $(REFERENCE_STORAGE) --name $$spec; \
	  $(VENV)/bin/study report $$spec --storage $(REFERENCE_STORAGE) --out results/$$spec; \
	  $(VENV)/bin/study export $$spec --storage $(REFERENCE_STORAGE) --out results/$$spec; \
	done

# Benchmarks (benchmarks/README.md): JSON + Markdown in results/benchmarks/, generated data in
# benchmarks/.work/. Extra flags through ARGS, e.g. `make bench-step ARGS="--compile"`.
bench-input: $(STAMP)
	$(PY) benchmarks/input_pipeline.py $(ARGS)

bench-step: $(STAMP)
	$(PY) benchmarks/train_step.py $(ARGS)

bench-overhead: $(STAMP)
	$(PY) benchmarks/overhead.py $(ARGS)

bench-read: $(STAMP)
	$(PY) benchmarks/read_side.py $(ARGS)

# The real-resolution input path: augmentation against torchvision, and memory over growing streamed splits.
bench-augment: $(STAMP)
	$(PY) benchmarks/augment_input.py $(ARGS)

bench-stream: $(STAMP)
	$(PY) benchmarks/stream_memory.py $(ARGS)

# report.yaml at full size: for a GPU machine (not part of `make bench`).
bench-study-wall: $(STAMP)
	$(PY) benchmarks/study_wall.py $(ARGS)

bench: bench-input bench-step bench-overhead bench-read
	$(PY) benchmarks/summary.py

# The GPU measurement (README "On a GPU machine"): the offline kit, built here with the registry,
# and benchmarks/gpu/run end to end on the CPU at tiny sizes (into a temporary folder).
gpu-kit: $(STAMP)
	PYTHON=$(PY) benchmarks/gpu/build-kit $(ARGS)

gpu-dry-run: $(STAMP)
	PYTHON=$(PY) benchmarks/gpu/run --dry-run $(ARGS)
