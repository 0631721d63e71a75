# brandtune: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

export BRANDTUNE_HOME ?= $(CURDIR)/.brandtune
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: venv demo test lint format clean mlflow-ui ui

# Create the virtual environment and install brandtune with its test tools. Re-runs only when
# pyproject.toml changes, so a second `make` reuses the environment in seconds.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing brandtune and its dependencies into $(VENV) (first time: about 2 minutes)..."
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | { grep -v 'is ignored' || true; }
	@# setuptools warns about every editable install ("Editable installation ... same name as your package"):
	@# nothing for a newcomer to act on; the filter matches that one message only.
	PYTHONWARNINGS='ignore:Editable installation' $(PY) -m pip install --quiet -e '.[dev]' 2>&1 \
		| { grep -v 'is ignored' || true; }
	@touch $(STAMP)

venv: $(STAMP)

## Run the pipeline on the built-in sample brand (data/brands/acme).
demo: $(STAMP)
	$(VENV)/bin/brandtune demo --brand acme

## Lint, check formatting, and run the test suite.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

## Browse runs, datasets and model versions: MLflow UI on http://127.0.0.1:5000 (Ctrl-C stops it).
mlflow-ui: $(STAMP)
	$(VENV)/bin/brandtune mlflow-ui

## Prefect server + UI, MLflow UI and a worker, with every deployment of prefect.yaml (Ctrl-C stops all).
ui: $(STAMP)
	$(VENV)/bin/brandtune ui

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .brandtune .pytest_cache .ruff_cache
