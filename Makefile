# Weir: the two quick-start commands are `make run` and `make test` (as root, Debian 12).
# Every target installs what it needs through scripts/setup.sh, which is idempotent.
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup run stop test lint unit e2e schemas bench clean

setup:
	@bash scripts/setup.sh

run: setup
	@bash scripts/run.sh

stop:
	@bash scripts/run.sh stop

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: setup lint
	$(BIN)/pytest -p no:cacheprovider $(PYTEST_ARGS)

schemas: setup
	$(BIN)/python -m contracts.generate

bench: setup
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
