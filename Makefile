# CardVault control plane: `make run` starts the service (with a private PostgreSQL unless
# CARDVAULT_DATABASE_URL is set), `make test` is what CI runs (.ci/run).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Data directory of `make run` (private PostgreSQL cluster in $(DATA_DIR)/postgres, generated secrets).
DATA_DIR = $${CARDVAULT_DATA_DIR:-.cardvault}
# pytest's arguments in `make test`: two xdist workers (the suite's CI budget is two cores); loadgroup keeps
# tests marked xdist_group("...") on one worker (the fleet tests share one costly fleet); the 25 slowest listed.
PYTEST_ARGS ?= -n 2 --dist loadgroup --durations=25
# Stops/destroys the local cluster; controlplane.localpg needs only the standard library.
LOCALPG = py=$(BIN)/python; [ -x "$$py" ] || py=$(PYTHON); "$$py" -m controlplane.localpg

.DEFAULT_GOAL := help
.PHONY: help install .venv system-deps constraints run test lint format bench bench-migrate bench-search bench-collect bench-signup bench-backup bench-pages bench-fleet bench-scale bench-route bench-deps clean distclean

help:
	@echo "make run        start the service (private PostgreSQL in $(DATA_DIR)/postgres unless CARDVAULT_DATABASE_URL)"
	@echo "make test       ruff, mypy --strict, lint-imports, pytest (starts its own throwaway PostgreSQL;"
	@echo "                on two pytest-xdist workers, one cluster each; PYTEST_ARGS=\"-n 0\" runs it serially)"
	@echo "make lint       ruff check, ruff format --check, mypy --strict, lint-imports (package layering)"
	@echo "make format     ruff format + ruff check --fix"
	@echo "make bench      provisioning benchmark (ops/bench/provision.py; BENCH_ARGS=\"--tenants 1000 --migrate\")"
	@echo "make bench-migrate  migrate tenants vs raw psycopg, 1,000 tenants (ops/bench/migrate.py)"
	@echo "make bench-search   card search at 100,000 cards, without and with the index (ops/bench/search.py)"
	@echo "make bench-collect  usage collection and /metrics benchmark (ops/bench/collect.py)"
	@echo "make bench-signup   database step via spares, clone and raw, and whole signups (ops/bench/signup.py)"
	@echo "make bench-backup   backup and restore of 100,000 cards vs raw pg_dump/pg_restore, 1,000 nightly backups, legacy import (ops/bench/backup.py)"
	@echo "make bench-pages    dashboard pages at 10,000 tenants vs the same SQL raw (ops/bench/pages.py)"
	@echo "make bench-fleet    2 servers x 1,000 tenants, 3 processes: load, server restart, kill -9, moves, a 100 MB move (ops/bench/fleet.py)"
	@echo "make bench-scale    the path to 100,000 tenants: control-plane memory and /metrics per tenant, per-server limits, the model (ops/bench/scale.py)"
	@echo "make bench-route    routed tenant API vs a bare handler, 200 tenants round-robin, also through PgBouncer (ops/bench/route.py)"
	@echo "make constraints  re-pin constraints.txt from .venv after changing dependencies"
	@echo "make clean      stop the local cluster, remove .venv and caches (keeps .cardvault)"
	@echo "make distclean  clean + destroy the local cluster and remove .cardvault"

install .venv: $(VENV)/.installed

# Debian packages the tests start or call: PostgreSQL, Redis (shared rate limits), Prometheus (promtool
# and a real scrape), Chromium (the Playwright browser tests), PgBouncer (in front of a test server).
# Installed with apt-get when missing and running as root; otherwise named.
system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v pg_config >/dev/null || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v promtool >/dev/null || [ -x /usr/bin/promtool ] || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || [ -x /usr/lib/chromium/chromium ] || missing="$$missing chromium"; \
	command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing="$$missing pgbouncer"; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; }; \
	else \
		echo "warning: missing system packages:$$missing (as root: apt-get install$$missing); tests that need them fail" >&2; \
	fi

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "error: $(PYTHON) is older than Python 3.11; run e.g. 'make PYTHON=python3.11 ...'" >&2; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { \
		rm -rf $(VENV); \
		echo "error: '$(PYTHON) -m venv' failed. On Debian/Ubuntu install the venv module (ensurepip):" >&2; \
		echo "    apt-get install python3-venv   (or python3.11-venv for your Python version)" >&2; \
		exit 1; }

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

# After changing dependencies in pyproject.toml: install what is missing, then pin everything again.
constraints: | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m pip freeze --exclude-editable | grep -viE '^(cardvault-controlplane|pip)==' > constraints.txt
	@touch $(VENV)/.installed

run: install
	@if [ -n "$${CARDVAULT_DATABASE_URL:-}" ]; then exec $(BIN)/cardvault serve; fi; \
	url=$$($(BIN)/python -m controlplane.localpg start --data-dir "$(DATA_DIR)") || exit $$?; \
	CARDVAULT_DATABASE_URL="$$url" exec $(BIN)/cardvault serve

test: install system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict controlplane
	$(BIN)/lint-imports
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict controlplane
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python ops/bench/provision.py $(BENCH_ARGS)

bench-migrate: install
	$(BIN)/python ops/bench/migrate.py $(BENCH_ARGS)

bench-search: install
	$(BIN)/python ops/bench/search.py $(BENCH_ARGS)

bench-collect: install
	$(BIN)/python ops/bench/collect.py

bench-signup: install
	$(BIN)/python ops/bench/signup.py $(BENCH_ARGS)

bench-backup: install
	$(BIN)/python ops/bench/backup.py $(BENCH_ARGS)

bench-pages: install
	$(BIN)/python ops/bench/pages.py $(BENCH_ARGS)

bench-fleet: install
	$(BIN)/python ops/bench/fleet.py $(BENCH_ARGS)

bench-scale: install
	$(BIN)/python ops/bench/scale.py $(BENCH_ARGS)

# The load generator of the routing benchmark (it falls back to an asyncio client, which competes with the
# servers for the same cores) and PgBouncer; installed when missing and running as root.
bench-deps:
	@missing=""; command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing="$$missing pgbouncer"; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else echo "warning: missing:$$missing (apt-get install$$missing)" >&2; fi

bench-route: install bench-deps
	$(BIN)/python ops/bench/route.py $(or $(BENCH_ARGS),--tenants 200 --duration 5 --rounds 2 --pgbouncer)

clean:
	@if [ -e "$(DATA_DIR)/postgres" ]; then $(LOCALPG) stop --data-dir "$(DATA_DIR)" || true; fi
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .benchmarks build dist *.egg-info
	find . \( -path ./.git -o -path ./.cardvault \) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

# Destroys the cluster in $CARDVAULT_DATA_DIR (default .cardvault) but only ever deletes .cardvault itself.
distclean:
	@if [ -e "$(DATA_DIR)/postgres" ] || [ -L "$(DATA_DIR)/postgres" ]; then \
		$(LOCALPG) destroy --data-dir "$(DATA_DIR)"; fi
	$(MAKE) clean
	rm -rf .cardvault
