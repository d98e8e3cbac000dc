# One entry point per task. `make demo` and `make check` are the README's two commands.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup demo run test test-fast lint types check clean

setup:
	@bash scripts/setup.sh

## the default pipeline, end to end, on this machine
demo: setup run

run:
	$(VENV)/bin/snakemake --profile profiles/local

## lint + types + the full test suite (what .ci/run calls)
check: setup lint types test

lint:
	$(VENV)/bin/ruff check src kernels tests benchmarks

types:
	$(VENV)/bin/mypy

test:
	$(PY) -m pytest -q

test-fast:
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf .snakemake logs results
