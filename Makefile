# The two commands of the README: `make serve` and `make test`. Both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint bench image

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar off -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# An explicit DENSEPRED_MODEL_DIR in the environment wins, as it does for the service itself.
MODEL_DIR := $(or $(DENSEPRED_MODEL_DIR),artifacts/models)

serve: $(STAMP)
	$(BIN)/python -m trainer bootstrap --out $(MODEL_DIR) --data artifacts/shapes
	DENSEPRED_MODEL_DIR=$(MODEL_DIR) $(BIN)/python -m service

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy models service trainer client

test: lint
	$(BIN)/python -m pytest

# densepred:cpu from the Dockerfile on a machine without Docker Hub: starts (or installs) the Docker engine,
# builds the Debian-based Python image once per machine, and passes this machine's CA bundle to pip as a
# BuildKit secret (docker/image.sh says how to change each). With Docker Hub:
# `DOCKER_BUILDKIT=1 docker build --target cpu -t densepred:cpu .`
image:
	docker/image.sh

# The CPU benchmarks of the README's Performance section (about 30 minutes; keep the machine quiet;
# service_r2_nginx needs nginx: apt-get install nginx).
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/compare.py --tasks segment detect instances --model-dir $(MODEL_DIR) \
		--out bench/results/compare_cpu
	$(BIN)/python bench/postprocess.py --out bench/results/postprocess_cpu.json
