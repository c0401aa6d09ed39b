# Two commands do everything on a fresh machine: `make experiment-local` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Where the real PneumoniaMNIST npz lies (data/pneumoniamnist/pneumoniamnist.npz, git-ignored): `make experiment-local`
# downloads it there with medmnist when it is missing. Override with `make experiment-local DATA_DIR=...`.
DATA_DIR ?= data/pneumoniamnist
PYTEST_ARGS ?=

.PHONY: install test lint proto experiment-local clean

# Every install reads the lock: requirements/*.txt, exported from uv.lock with a sha256 for every file, installed
# with pip's hash checking and without resolving anything (--no-deps: each file is a whole closure). The build tools
# come first, so that our package and any sdist are built from the lock too (--no-build-isolation).
PIP_LOCKED := $(BIN)/python -m pip install --quiet --require-hashes --no-deps --no-build-isolation

install: $(STAMP)

$(STAMP): pyproject.toml requirements/build.txt requirements/dev.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP_LOCKED) -r requirements/build.txt
	$(PIP_LOCKED) -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Refresh the lock on purpose after editing pyproject.toml's dependencies (only what changed is re-resolved);
# UPGRADE=1 moves every package to the newest release pyproject.toml allows, UPGRADE=name just that one. Then
# `make clean test` and commit uv.lock and requirements/ (README: "Dependencies and the lock").
.PHONY: lock
lock: install
	$(BIN)/python scripts/lock.py $(if $(filter 1,$(UPGRADE)),--upgrade,$(if $(UPGRADE),--upgrade-package $(UPGRADE)))

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Regenerate the gRPC stubs in proto/gen from proto/pneumonia_proto/v1/*.proto (commit both; a test checks they agree).
proto: install
	$(BIN)/python scripts/gen_proto.py

# Regenerate README.md's settings tables from the settings models (a test fails when they are stale).
.PHONY: docs
docs: install
	$(BIN)/python scripts/settings_docs.py

# The web page's tests drive Debian's chromium headless: installed here when the machine has none.
test: install lint
	scripts/ensure_chromium.sh
	$(BIN)/pytest $(PYTEST_ARGS)

# Every service as a local process on 127.0.0.1 (storage, logs and scratch under runs/local), the experiment
# through their APIs, TorchServe answering for the best model; everything stops at the end, also on Ctrl-C.
# PROFILE=quick (default: a ~15-minute smoke run) or PROFILE=standard (every image, with power, < 1 h on 2 cores).
experiment-local: install
	$(BIN)/pneumonia experiment --via-services --local-services --profile $(PROFILE) --dataset pneumoniamnist \
		--data-dir $(DATA_DIR) --work-dir runs/local

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# ---- Containers and Kubernetes (docs/deployment.md) ----
# make experiment [PROFILE=quick|standard|full|smoke] [DEVICE=gpu|cpu] [VARIANT=cuda|cpu] [DATASET=...] [DATA_DIR=...]
#                 [STOP=0]: the experiment through docker-compose. VARIANT is the torch build in the images: `cuda`
# (PyPI's, also runs on a CPU) by default with DEVICE=gpu, `cpu` (download.pytorch.org) with DEVICE=cpu. STOP=0
# leaves the stack up afterwards, serving the model. COMPOSE and ENV_FILE (default .env) say which compose command
# and settings: docs/deployment.md, "Building without a registry".
PROFILE ?= quick
DEVICE ?= gpu
VARIANT ?= $(if $(filter gpu,$(DEVICE)),cuda,cpu)
DATASET ?= pneumoniamnist
STOP ?= 1
ENV_FILE ?= .env
COMPOSE ?= docker compose
KUBECTL ?= kubectl
K8S_OVERLAY ?= $(if $(filter gpu,$(DEVICE)),gpu,cpu)
REPORT_DIR ?= results/compose
RUN_ID := compose-$(shell date -u +%Y%m%d-%H%M%S)-$(PROFILE)
COMPOSE_ENV = COMPOSE_PROFILES=$(DEVICE) PNEUMONIA_VARIANT=$(VARIANT) \
	DATA_DIR=$(abspath $(DATA_DIR)) REPORT_DIR=$(abspath $(REPORT_DIR))
COMPOSE_CMD = $(COMPOSE) --env-file $(ENV_FILE)
# With the `experiment` profile active, so that the orchestrator's container and volume go too.
COMPOSE_DOWN = $(COMPOSE_ENV) COMPOSE_PROFILES=$(DEVICE),experiment $(COMPOSE_CMD) down

.PHONY: env k8s-env experiment compose-smoke validate-deploy k8s-apply k8s-experiment
# .env (compose) and k8s/base/secrets.env with fresh random secrets where they have none; values already set stay.
env:
	python3 scripts/make_secrets.py
k8s-env:
	python3 scripts/make_secrets.py --k8s


experiment: SHELL := /bin/bash
experiment: .SHELLFLAGS := -euo pipefail -c
experiment:
	@test -f $(ENV_FILE) || { echo "make experiment: make env (or cp .env.example $(ENV_FILE) and set its secrets) first" >&2; exit 2; }
	@test -d $(DATA_DIR) || { echo "make experiment: DATA_DIR=$(DATA_DIR) is not a directory" >&2; exit 2; }
	$(COMPOSE_ENV) COMPOSE_PROFILES=$(DEVICE),experiment $(COMPOSE_CMD) build
	mkdir -p $(REPORT_DIR)/$(RUN_ID)
	trap '$(if $(filter 1,$(STOP)),$(COMPOSE_DOWN);) rmdir $(REPORT_DIR)/$(RUN_ID) 2>/dev/null || true' EXIT; \
	$(COMPOSE_ENV) $(COMPOSE_CMD) up -d --wait; \
	$(COMPOSE_ENV) $(COMPOSE_CMD) run --rm -T orchestrator pneumonia experiment --via-services --profile $(PROFILE) \
		--dataset $(DATASET) --data-dir /data --work-dir /var/lib/pneumonia/work --run-id $(RUN_ID) \
		2>&1 | tee $(REPORT_DIR)/$(RUN_ID)/experiment.log; \
	$(COMPOSE_ENV) $(COMPOSE_CMD) run --rm -T --user "$$(id -u):$$(id -g)" report $(RUN_ID); \
	echo "report: $(REPORT_DIR)/$(RUN_ID)/analysis/comparison_report.txt"

# On a machine with no Docker and no image registry (this project's CI kind): install and start what it needs, build
# the images, run the smoke profile through docker-compose on phantom data, check every service and TorchServe's
# published REST and gRPC ports, then `down -v` and check nothing is left (docker/registry-free/compose-smoke.sh).
compose-smoke:
	bash docker/registry-free/compose-smoke.sh

# Offline checks of the Dockerfiles (hadolint), docker-compose.yml (Docker Compose's own parser) and every
# kustomization (kubectl kustomize + kubernetes-validate); tests/test_deployment.py runs the same in `make test`.
validate-deploy: install
	$(BIN)/python scripts/validate_deploy.py

k8s-apply:
	@test -s k8s/base/secrets.env || { echo "make k8s-apply: make k8s-env (or fill in a copy of k8s/base/secrets.env.example) first" >&2; exit 2; }
	$(KUBECTL) apply -k k8s/overlays/$(K8S_OVERLAY)

k8s-experiment: install
	KUBECTL=$(KUBECTL) PYTHON=$(BIN)/python bash k8s/experiment.sh k8s/overlays/$(K8S_OVERLAY) $(DATA_DIR) results/k8s

# A trained classifier checkpoint as a TorchServe archive (<EXPORT_DIR>/<MODEL_NAME>.mar):
#   make mar CHECKPOINT=models/baseline_resnet18.pth [MODEL_NAME=pneumonia] [EXPORT_DIR=model-store]
.PHONY: mar
mar: install
	$(if $(CHECKPOINT),,$(error set CHECKPOINT=path/to/classifier.pth))
	$(BIN)/pneumonia archive-classifier --checkpoint $(CHECKPOINT) --model-name $(or $(MODEL_NAME),pneumonia) \
		--export-dir $(or $(EXPORT_DIR),model-store)
