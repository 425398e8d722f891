# Clinic Ops: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_DB := data/clinic.db

.PHONY: install demo test test-fast dashboard api bench clean-demo lab

# Create .venv if missing and install the project with its dev extra (again when pyproject changes).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Build the demo clinic if there is no database yet, then run the daily chain for the demo's day.
demo: $(STAMP)
	@if [ ! -f $(DEMO_DB) ] && [ -z "$$DATABASE_URL" ]; then \
		$(BIN)/clinic demo && $(BIN)/clinic load; \
	fi
	$(BIN)/python run_daily.py --from $$($(BIN)/clinic demo-day --first) --to $$($(BIN)/clinic demo-day)
	@$(BIN)/clinic where

# Tests run in parallel (pytest-xdist): one worker more than the cores, because the browser and
# end-to-end tests spend part of their time waiting on servers, kernels and idle gaps; the tests
# that share an expensive fixture (a demo clinic, a server) stay on one worker.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

# Everything but the slow end-to-end tests (those marked slow).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slow"

dashboard: $(STAMP)
	$(BIN)/clinic dashboard

api: $(STAMP)
	$(BIN)/clinic api

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

# Every bench in one run: each writes its figures to outputs/bench/, then docs/benchmarks.md is
# regenerated from them (the run id keeps older files out). A failing bench does not stop the others;
# the report names it and make fails at the end.
bench: $(STAMP)
	rm -rf outputs/bench && mkdir -p outputs/bench
	@export CLINIC_BENCH_RUN_ID=$$(date -u +%Y%m%dT%H%M%SZ); failed=""; \
	for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || failed="$$failed $$f"; done; \
	$(BIN)/python bench/report.py || exit 1; \
	if [ -n "$$failed" ]; then echo "bench failed:$$failed"; exit 1; fi

# Regenerate what docs/ holds generated from the code: the check catalogue in docs/validation.md.
.PHONY: docs
docs: $(STAMP)
	$(BIN)/python -m clinic_lib.validation.checks docs/validation.md

# Start the demo over: removes the demo database, data and outputs (never touches a DATABASE_URL).
clean-demo:
	rm -rf data/raw data/daily data/clinic.db data/clinic.db-wal data/clinic.db-shm data/demo.json outputs/runs outputs/model outputs/scores outputs/priorities outputs/outbox outputs/validation
