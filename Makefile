# Two entry points for a fresh machine: `make demo` (the CPU main job) and `make test` (the suite).
# Each sets up .venv on first use. torch is pinned first so that pip takes the CPU build rather than resolving
# a multi-GB CUDA build by itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: setup test demo toy lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install "$(TORCH)" -e ".[dev]"
	touch $@

test: setup
	$(PY) -m pytest tests

demo: setup
	$(VENV)/bin/aent demo

toy: setup
	$(VENV)/bin/aent toy-mdp

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
