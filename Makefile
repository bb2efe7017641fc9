# capml: the two set-up commands of README.md live here.
#   make demo   install (once) and run the pipeline on the embedded default (demo config)
#   make test   install (once) and run the tests
# Installation is idempotent: a stamp file records the pyproject.toml it installed; a second run reinstalls nothing.

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.capml-installed
DEMO_CONFIG ?= data/configs/ag3sbri-demo.toml
PYTEST_ARGS ?=
# the suite in 2 processes, one test file each at a time (module fixtures stay shared): ~half the wall time on 2 cores
PYTEST_WORKERS ?= 2

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export OMP_NUM_THREADS ?= 1
export GPAW_SETUP_PATH ?= /usr/share/gpaw-setups

.PHONY: install system-deps demo test test-fast lint dashboard clean

install: system-deps $(STAMP)

system-deps:
	@bash deploy/install-system-deps.sh

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24" setuptools wheel
	# torch first, from the local CPU wheel: every later requirement is satisfied by it, so no CUDA build is pulled
	$(PY) -m pip install --quiet torch==2.13.0
	CC=g++ $(PY) -m pip install --quiet --progress-bar off -e ".[dft,flows,dashboard,dev]"
	@$(PY) -c "import torch, sys; v = torch.__version__; print('torch', v); sys.exit(0 if v == '2.13.0+cpu' else 'expected the CPU build torch 2.13.0+cpu, got ' + v)"
	@! $(PY) -m pip list 2>/dev/null | grep -qi '^nvidia-' || { echo "CUDA packages were pulled in: see pip list" >&2; exit 1; }
	@touch $(STAMP)

demo: install
	$(VENV)/bin/capml run $(DEMO_CONFIG)

test: install
	$(VENV)/bin/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: install
	$(VENV)/bin/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

dashboard: install
	$(VENV)/bin/capml dashboard --config $(DEMO_CONFIG)

clean:
	rm -rf $(VENV) .pytest_cache
