# rf-acquisition: the two README commands and their helpers.
#   make run    one acquisition on the embedded default (simulated receivers, ./data)
#   make test   the whole suite against real TimescaleDB + S3 it starts and stops itself
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv run test services-up services-down lint format bench clean

$(STAMP): pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh "$(PYTHON)" "$(VENV)"
	touch $(STAMP)

venv: $(STAMP)

# The command line quiets the embedded Prefect server itself (flows/cli.py); simulated
# receivers store in ./data and SQLite unless a target is named.
# A raised-cosine BPSK emitter: a locatable signal (a bare carrier has no time information).
run: $(STAMP)
	$(PY) -m flows acquire --network simulated --duration-s 2 --modulation rrc-bpsk --locate

test: $(STAMP)
	bash scripts/test.sh $(PYTEST_ARGS)

services-up: $(STAMP)
	bash scripts/services.sh install
	bash scripts/services.sh up
	$(PY) -m flows.configure from-env --env-file .services/env
	@echo "settings in .services/env and saved as the rf-acquisition blocks (used by --storage/--database auto)"

services-down:
	-$(PY) -m flows.configure remove
	bash scripts/services.sh down

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Storage and database benchmarks need the services: `make services-up` first.
# bench_flow.py takes BENCH_FLOW_ARGS, e.g. BENCH_FLOW_ARGS="--cases 7:2 --repeat 1".
BENCH_FLOW_ARGS ?=
bench: $(STAMP)
	set -a; [ -f .services/env ] && . .services/env; set +a; \
	for b in bench/bench_*.py; do \
		echo "== $$b"; \
		if [ "$$b" = bench/bench_flow.py ]; then $(PY) "$$b" $(BENCH_FLOW_ARGS) || exit 1; \
		else $(PY) "$$b" || exit 1; fi; \
	done

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache
