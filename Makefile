# Every workflow is a make target. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Settings accepted as make variables and passed to the processes (DESIGN.md "Local run").
SETTINGS := REDIS_URL MONGO_URL SQL_URL S3_ENDPOINT_URL JWT_SECRET STREAM_PARTITIONS GATEWAY_HOST GATEWAY_PORT
export $(SETTINGS)

.PHONY: help install lock run test lint typecheck unit bench clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

install: $(STAMP) ## create .venv with the locked dependencies (uv.lock)

lock: $(UV) ## re-resolve uv.lock after editing pyproject.toml
	$(UV) lock

run: $(STAMP) ## the whole chat stack locally on embedded defaults (Ctrl-C stops it)
	$(PY) -m chat.localstack

lint: $(STAMP) ## ruff check + ruff format --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP) ## mypy (strict)
	$(VENV)/bin/mypy

unit: $(STAMP) ## only the fast tests
	$(VENV)/bin/pytest -q tests/unit

test: lint typecheck ## lint, types and every test (installs what it needs)
	$(PY) -m tests.setup_env
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench: $(STAMP) ## benchmarks; writes the figures to stdout (see docs/benchmarks.md)
	$(PY) -m benchmarks

clean: ## remove local data and build outputs (keeps .venv)
	rm -rf .local build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

-include infra/infra.mk
-include loadtest/loadtest.mk

docs: $(STAMP) ## regenerate docs/configuration.md from the Settings class
	$(PY) -m chat.config --markdown > docs/configuration.md
