# Two entry points, both usable on a fresh clone: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.segstudy-installed
STORAGE ?= $(CURDIR)/studies

.PHONY: setup demo test test-fast clean-demo-data

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
