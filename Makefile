# rf-acquisition: the two README commands and their helpers.
#   make run    one acquisition on the embedded default (simulated receivers, ./data)
#   make test   the whole suite against real TimescaleDB + S3 it starts and stops itself
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv run test services-up services-down lint format bench bench-quick clean

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

# One table of ratios against baselines measured in the same run (bench/run.py); the
# storage and database rows need the services (`make services-up`), else they say skipped.
# BENCH_ARGS reaches the runner (e.g. "--only dsp flow"); BENCH_FLOW_ARGS replaces the flow
# cases, e.g. BENCH_FLOW_ARGS="--cases 7:2 --repeat 1". `make bench-quick`: a smoke check.
BENCH_ARGS ?=
BENCH_FLOW_ARGS ?=
bench: $(STAMP)
	$(PY) bench/run.py $(BENCH_ARGS) $(if $(BENCH_FLOW_ARGS),--flow-args="$(BENCH_FLOW_ARGS)")

bench-quick: $(STAMP)
	$(PY) bench/run.py --quick $(BENCH_ARGS) $(if $(BENCH_FLOW_ARGS),--flow-args="$(BENCH_FLOW_ARGS)")

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache
