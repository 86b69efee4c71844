# The two commands: `make run` (everything on embedded defaults) and `make test` (the whole suite).
# `make test-fast` is the inner loop: the tests not marked `slow` (unit and in-process), no lint.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast install lint bench clean reliability

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m launch.run

# Lint and type-check first (seconds), then every test against real Temporal servers and databases.
test: lint
	$(PY) -m pytest -q -p no:cacheprovider

# The inner loop: unit and in-process tests on SQLite. Leaves out the `slow` tests (real processes: whole
# stacks, the CLI in a subprocess, the crash harness, fuzzing, benchmark smoke runs) and the `postgres` ones.
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow and not postgres"

# Crash/restart/outage harness, full size: 1,000 progressions, every fault kind (docs/RELIABILITY.md).
RELIABILITY_ARGS ?= --progressions 1000 --seed 2026 --concurrency 12
reliability: $(STAMP)
	$(PY) -m reliability.crash_harness $(RELIABILITY_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy engine workflows activities api client launch

# Every benchmark at full size (about 35 minutes on 2 cores; see docs/PERFORMANCE.md). BENCH_ARGS=--quick for a smoke run.
bench: $(STAMP)
	$(PY) -m bench.run_all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .data
