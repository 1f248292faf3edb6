# Mitosis: `make run` starts the system on its embedded defaults, `make test` tests it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
NODE_STAMP := node_modules/.installed-stamp

.DEFAULT_GOAL := help

.PHONY: help ## show the targets and what they do
help:
	@grep -E '^\.PHONY: [a-z-]+ ## ' $(MAKEFILE_LIST) | sed -E 's/^\.PHONY: ([a-z-]+) ## (.*)/  \1\t\2/' | expand -t 12

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

.PHONY: setup ## install Python and Node dependencies into .venv and node_modules
setup: $(STAMP) $(NODE_STAMP)

.PHONY: proto ## regenerate Python code and stubs from proto/
proto: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

.PHONY: run ## start the planner and the executor on their embedded defaults (Ctrl-C stops)
run: $(STAMP)
	$(BIN)/python scripts/run.py

.PHONY: test ## run the whole test suite against real servers
test: $(STAMP)
	$(BIN)/pytest

.PHONY: lint ## check: ruff, ruff format, mypy (strict), buf lint
lint: $(STAMP) $(NODE_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy services clients
	npx --no-install buf lint

.PHONY: format ## fix what ruff can fix and format the code
format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.PHONY: clean ## remove the virtualenv, node_modules and local data
clean:
	rm -rf $(VENV) node_modules data .mypy_cache .ruff_cache .pytest_cache
