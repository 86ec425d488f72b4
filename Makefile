# Everything runs from a local virtualenv that these targets create.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench floors pythons clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/ctxlab run bad-then-shiny

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check ctxlab scenarios tests benchmarks
	$(BIN)/ruff format --check ctxlab scenarios tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

# The oldest declared version of every direct dependency (uv's
# lowest-direct resolution), then the scenarios and the CLI tests on them.
FLOORS := .venv-floors
floors: $(STAMP)
	$(BIN)/python -m pip install --quiet uv
	rm -rf $(FLOORS)
	$(BIN)/uv venv --quiet --python $(PYTHON) $(FLOORS)
	VIRTUAL_ENV=$(FLOORS) $(BIN)/uv pip install --quiet --resolution lowest-direct -e '.[test]'
	$(FLOORS)/bin/ctxlab --version
	$(FLOORS)/bin/ctxlab list > /dev/null
	$(FLOORS)/bin/ctxlab check --server both
	$(FLOORS)/bin/python -m pytest -q -p no:cacheprovider tests/test_cli.py tests/test_independent.py

# Tests and `ctxlab check` on Python 3.14 (flag off and on) and 3.15 in a
# Debian chroot (needs root; not part of CI).  FORKY=DIR to place it elsewhere.
pythons:
	tools/pythons.sh

clean:
	rm -rf $(VENV) $(FLOORS) dist build .pytest_cache
