# Two-command setup: `make demo` and `make test` both go through `make install` (idempotent).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The torch pin is read from pyproject.toml so versions live in one place. It is installed first because
# `pip install torch==X` picks the CPU build on local disk; an unpinned resolve would pull a multi-GB CUDA build.
TORCH_PIN := $(shell grep -o '"torch==[0-9.]*"' pyproject.toml | tr -d '"')

.PHONY: install test test-fast lint demo assets smoke nightly clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_PIN)"
	$(PIP) install --quiet -e ".[train,dev]"
	touch $@

lint: install
	$(VENV)/bin/ruff check edgekd tests benchmarks scripts
	$(VENV)/bin/ruff format --check edgekd tests benchmarks scripts
	$(VENV)/bin/mypy
	$(PY) scripts/check_layout.py

test: lint
	$(VENV)/bin/pytest -q

# The edit-test loop: everything but the whole-pipeline runs and the tests over ~10 s (markers in pyproject.toml).
test-fast: lint
	$(VENV)/bin/pytest -q -m "not e2e and not slow"

assets: install
	$(VENV)/bin/edgekd assets

smoke: install
	$(VENV)/bin/edgekd compress recipes/smoke.yaml

# The quickstart's teacher and student both start from MiniLM-L6: only that model is placed (not MPNet-base's 400 MB).
demo: install
	$(VENV)/bin/edgekd assets --only minilm-l6
	$(VENV)/bin/edgekd compress recipes/quickstart.yaml

# The recipe fuzz test with many more examples than `make test` runs (minutes).
nightly: install
	HYPOTHESIS_PROFILE=nightly $(VENV)/bin/pytest -q tests/test_validate_fuzz.py

clean:
	rm -rf $(VENV) runs
