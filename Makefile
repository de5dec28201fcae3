# armt_viz developer entry points. Needs only python3 (>= 3.11), make and, for the browser tests, apt-get.
#   make setup   create .venv, install the pinned requirements and the package (editable); install chromium
#   make demo    record the shipped model on a long stream and serve the dashboard on http://127.0.0.1:5006
#   make test    run the whole test suite (unit, notebook and browser tests) on 2 workers
#   make test-gpu  run the GPU tests (tests/gpu) on a CUDA machine; needs only an existing venv (no network)
#   make bench   run the benchmarks, quick (bench/run_all.py; --full for the long inputs)
#   make clean   remove build outputs and caches (keeps .venv and runs/); `make distclean` also removes .venv

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.setup-stamp
REQS   := requirements.txt requirements-notebook.txt requirements-test.txt
CHROMIUM := /usr/bin/chromium

.PHONY: help setup chromium test test-gpu demo bench clean distclean

help:
	@sed -n 's/^#   make /  make /p' $(MAKEFILE_LIST)

# Idempotent: the stamp is rebuilt only when a requirement file or pyproject.toml changes (or when
# armt_viz/__init__.py first appears, so the editable install maps the package), or after a failed run.
setup: $(STAMP) chromium

$(STAMP): $(REQS) pyproject.toml $(wildcard armt_viz/__init__.py)
	@if [ ! -x "$(PY)" ]; then \
	    $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	        || { echo "error: $(PYTHON) must be Python >= 3.11" >&2; exit 1; }; \
	    echo "+ $(PYTHON) -m venv $(VENV)"; \
	    $(PYTHON) -m venv $(VENV); \
	fi
	$(PIP) install --upgrade pip
	$(PIP) install $(addprefix -r ,$(REQS))
	$(PIP) install -e . --no-deps
	@touch $@

# Debian chromium for the Playwright browser tests (never `playwright install`: it downloads browsers).
# Checked on every `make setup`; costs nothing once /usr/bin/chromium exists.
chromium:
	@if [ -x "$(CHROMIUM)" ]; then \
	    :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	    SUDO=""; \
	    if [ "$$(id -u)" != 0 ]; then \
	        if command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	        else echo "warning: not root and no sudo; cannot install chromium (browser tests will fail)" >&2; exit 0; fi; \
	    fi; \
	    echo "+ $$SUDO apt-get update && $$SUDO apt-get install -y chromium chromium-driver"; \
	    $$SUDO apt-get update && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; \
	else \
	    echo "warning: $(CHROMIUM) missing and no apt-get; install chromium yourself for the browser tests" >&2; \
	fi

# pytest's exit code goes through unchanged (5 = no tests collected is a failure).
# One BLAS/OpenMP thread per test worker: the models are tiny, and two workers with two threads each
# on a 2-core machine made them 5-10x slower through contention.
test: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile tests

# No `setup` prerequisite: a GPU machine may have no network. PY=... picks another interpreter with the
# requirements and a CUDA build of torch; a machine without CUDA fails (ARMT_REQUIRE_GPU=1), never skips.
test-gpu:
	@test -x "$(PY)" || command -v "$(PY)" >/dev/null \
	    || { echo "error: $(PY) not found; run make setup first, or pass PY=/path/to/python" >&2; exit 1; }
	ARMT_REQUIRE_GPU=1 PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(PY) -m pytest -q -m gpu tests/gpu

demo: setup
	$(VENV)/bin/armt-viz demo

bench: setup
	$(PY) -m bench.run_all

clean:
	rm -rf build dist .pytest_cache .hypothesis test-artifacts *.egg-info
	find . -path ./$(VENV) -prune -o -type d \( -name __pycache__ -o -name .ipynb_checkpoints \) -print0 \
	    | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)
