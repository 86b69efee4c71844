# The two commands: `make run` (everything on embedded defaults) and `make test` (the whole suite).
# `make test-fast` is the inner loop: the tests not marked `slow` (unit and in-process), no lint.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast test-soak install lint bench clean reliability

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m launch.run

# Test processes keep compiled bytecode under .venv/pycache (outside the source tree), even where the
# environment sets PYTHONDONTWRITEBYTECODE: otherwise every process (and every xdist worker) compiles the
# project and the tests again, about 6 s of CPU each.
TEST_ENV := PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX=$(CURDIR)/$(VENV)/pycache

# Lint and type-check first (seconds), then every test against real Temporal servers and databases.
test: lint
	$(TEST_ENV) $(PY) -m pytest -q -p no:cacheprovider

# The inner loop: tests/unit, tests/workflow and tests/api on SQLite, spread over the cores (pytest-xdist: one
# Temporal dev server per xdist worker, each test file whole on one worker for its module fixtures). Leaves
# out the `slow` tests (tests/system: whole stacks, CLI subprocesses, a browser, the crash harness, fuzzing,
# benchmark smoke runs; not even collected) and the few `slow` and `postgres` tests of the other tiers.
# Without schemathesis' pytest plugin (only tests/system's fuzzing uses it): importing it cost each process
# (the xdist controller and every worker) about 1.9 s (python -X importtime).
# Measured (README, Tests): 356 s wall and 245 s CPU at load 8-14 on 2 shared cores; issue 14 asks for under a minute.
FAST_WORKERS ?= auto
test-fast: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -p no:cacheprovider -p no:schemathesis -m "not slow and not postgres" \
		-n $(FAST_WORKERS) --dist loadfile \
		tests/unit tests/workflow tests/api

# Issue 14's proof: SOAK_RUNS rounds, each two fresh clones running `make $(SOAK_TARGET)` side by side; log in .soak/.
SOAK_RUNS ?= 5
SOAK_TARGET ?= test
test-soak:
	scripts/soak.sh $(SOAK_RUNS) $(SOAK_TARGET)

# Crash/restart/outage harness, full size: 1,000 progressions, every fault kind (docs/RELIABILITY.md).
RELIABILITY_ARGS ?= --progressions 1000 --seed 2026 --concurrency 12
reliability: $(STAMP)
	$(PY) -m reliability.crash_harness $(RELIABILITY_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy engine workflows activities api client launch progression testing

# Every benchmark at full size (about 45 minutes on 2 cores; see docs/PERFORMANCE.md). BENCH_ARGS=--quick for a smoke run.
bench: $(STAMP)
	$(PY) -m bench.run_all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .data
