# Two commands do everything on a fresh machine: `make experiment-local` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Where the real PneumoniaMNIST npz lies (train + val); override with `make experiment-local DATA_DIR=...`.
DATA_DIR ?= ../shared/data/pneumoniamnist
PYTEST_ARGS ?=

.PHONY: install test lint proto experiment-local clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24,<27"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Regenerate the gRPC stubs in proto/gen from proto/pneumonia/v1/*.proto (commit both; a test checks they agree).
proto: install
	$(BIN)/python scripts/gen_proto.py

test: install lint
	$(BIN)/pytest $(PYTEST_ARGS)

experiment-local: install
	$(BIN)/pneumonia experiment --profile quick --dataset pneumoniamnist --data-dir $(DATA_DIR)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
