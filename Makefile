# Two entry points for a fresh machine: `make demo` (the CPU main job) and `make test` (the suite).
# Each sets up .venv on first use. torch is pinned first so that pip takes the CPU build rather than resolving
# a multi-GB CUDA build by itself. `make e2e` runs verl's own main_ppo with vLLM rollouts on a CPU, in its own
# environment .venv-e2e (exact pins in tests/e2e/requirements.txt; see docs/VERL.md, "End to end on a CPU").
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

VENV_E2E ?= .venv-e2e
PY_E2E := $(VENV_E2E)/bin/python
E2E_ARGS ?=
MATRIX_ARGS ?=

.PHONY: setup test demo toy vocab lint clean e2e e2e-setup e2e-matrix e2e-matrix-ci

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

vocab: setup  # about 40 minutes on 2 cores (docs/VOCAB.md)
	$(VENV)/bin/aent vocab-sweep --out runs/vocab

# torch's CPU build first; then the pinned stack, the project and the test-only CPU bridges (tests/support). PyPI's
# torchvision/torchaudio/torchcodec builds do not match the CPU torch and are not needed: removed.
e2e-setup: $(VENV_E2E)/.installed

$(VENV_E2E)/.installed: tests/e2e/requirements.txt pyproject.toml tests/support/pyproject.toml
	$(PYTHON) -m venv $(VENV_E2E)
	timeout 600 $(PY_E2E) -m pip install --upgrade pip
	timeout 900 $(PY_E2E) -m pip install "$(TORCH)"
	timeout 1800 $(PY_E2E) -m pip install -r tests/e2e/requirements.txt -e . -e tests/support
	$(PY_E2E) -m pip uninstall -y torchvision torchaudio torchcodec
	touch $@

e2e: e2e-setup
	timeout 3000 $(PY_E2E) tests/e2e/run.py $(E2E_ARGS)

# AEnt in the settings real verl runs use: one short main_ppo per cell of tests/e2e/matrix.py (docs/VERL.md,
# "The settings matrix"); e2e-matrix-ci runs the cells CI has time for.
e2e-matrix: e2e-setup
	timeout 7200 $(PY_E2E) tests/e2e/matrix.py $(MATRIX_ARGS)

e2e-matrix-ci: e2e-setup
	timeout 3000 $(PY_E2E) tests/e2e/matrix.py --ci $(MATRIX_ARGS)

lint: setup  # what CI runs
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(VENV_E2E) build *.egg-info .pytest_cache
