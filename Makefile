# FinOps Review. Quick start: `make run` (demo dashboard) and `make test` (whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Front-end libraries (package.json, pinned in package-lock.json) live in node_modules/; the
# stamp sits inside it, so deleting node_modules makes `make install` run `npm ci` again.
NODE_STAMP := node_modules/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test test-fast lint format bench install clean services

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
		echo "npm was not found: install Node.js 20 with npm (https://nodejs.org/ or your system's" >&2; \
		echo "package manager), then run 'make install' again. It installs the front-end libraries" >&2; \
		echo "(Plotly, HTMX) pinned in package-lock.json." >&2; \
		exit 1; }
	npm ci --no-audit --no-fund
	touch $(NODE_STAMP)

install: $(STAMP) $(NODE_STAMP)

# Demo dashboard on embedded defaults: SQLite and in-process tasks, unless DATABASE_URL /
# REDIS_URL are set in the environment.
run: $(STAMP) $(NODE_STAMP)
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py bootstrap
	$(BIN)/python manage.py demo
	$(BIN)/python manage.py runserver $(HOST):$(PORT)

# The whole suite, against PostgreSQL and Redis when they are reachable on this machine.
test: $(STAMP) $(NODE_STAMP) lint
	set -a; eval "$$($(BIN)/python scripts/services.py)"; set +a; \
	FINOPS_ENV=test $(BIN)/pytest $(PYTEST_ARGS)

# Without the slow browser and integration tests.
test-fast: $(STAMP) $(NODE_STAMP)
	set -a; eval "$$($(BIN)/python scripts/services.py)"; set +a; \
	FINOPS_ENV=test $(BIN)/pytest -m "not integration and not browser" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	FINOPS_ENV=test $(BIN)/python manage.py makemigrations --check --dry-run > /dev/null

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	set -a; eval "$$($(BIN)/python scripts/services.py)"; set +a; \
	status=0; for script in tests/bench/bench_*.py; do $(BIN)/python $$script || status=1; done; exit $$status

clean:
	rm -rf $(VENV) node_modules db.sqlite3 staticfiles .pytest_cache .ruff_cache
