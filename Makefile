# Everything runs from a local virtualenv that these targets create.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-recorders lint bench floors pythons mutate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/ctxlab run bad-then-shiny

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The trace tests again on the Pythons of the other recorder: ContextVar's methods replaced
# (3.10) and sys.monitoring (3.12); each Python that is installed gets a
# throwaway virtualenv of its own.
RECORDER_PYTHONS ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python)) \
	$(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python))
TRACE_TESTS := tests/test_trace.py tests/test_trace_cli.py tests/test_trace_plugin.py tests/test_trace_transparent.py

test-recorders:
	@for python in $(RECORDER_PYTHONS); do \
		venv=.venv-$$($$python -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
		test -x $$venv/bin/python || $$python -m venv $$venv || exit 1; \
		$$venv/bin/python -m pip install --quiet -e '.[test]' || exit 1; \
		$$venv/bin/python -m pytest -q -p no:cacheprovider $(TRACE_TESTS) || exit 1; \
	done

lint: $(STAMP)
	$(BIN)/ruff check ctxlab scenarios tests benchmarks
	$(BIN)/ruff format --check ctxlab scenarios tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/bench_trace.py

# Mutation testing: `make mutate MODULE=report` (several: MODULE="report labels";
# none: every module; AGAIN=1: only the last run's survivors; ALSO=.venv310/bin/python:
# the tests on that Python too).  See mutation/mutate.py.
mutate: $(STAMP)
	$(BIN)/python mutation/mutate.py $(MODULE) $(if $(AGAIN),--again) $(foreach python,$(ALSO),--also $(python))

# The oldest declared version of every runtime dependency (uv's
# lowest-direct resolution), then the scenarios, the CLI tests and probe's
# on them (Starlette before 0.33 gives a mounted app its path without the
# mount's prefix).  Only the runtime floors are declared ones: pytest and
# the two middleware libraries probe's fixture apps use come at their
# newest, and the optional libraries behind some scenarios stay out (those skip).
FLOORS := .venv-floors
floors: $(STAMP)  # uv comes with the [test] extra
	rm -rf $(FLOORS)
	$(BIN)/uv venv --quiet --python $(PYTHON) $(FLOORS)
	VIRTUAL_ENV=$(FLOORS) $(BIN)/uv pip install --quiet --resolution lowest-direct -e .
	VIRTUAL_ENV=$(FLOORS) $(BIN)/uv pip install --quiet pytest asgi-correlation-id itsdangerous
	$(FLOORS)/bin/ctxlab --version
	$(FLOORS)/bin/ctxlab list > /dev/null
	$(FLOORS)/bin/ctxlab check --server both
	$(FLOORS)/bin/python -m pytest -q -p no:cacheprovider tests/test_cli.py tests/test_independent.py tests/test_diagnose.py

# Tests and `ctxlab check` on Python 3.14 (flag off and on) and 3.15 in a
# Debian chroot (needs root; not part of CI).  FORKY=DIR to place it elsewhere.
pythons:
	tools/pythons.sh

clean:
	rm -rf $(VENV) $(FLOORS) .venv-3.* dist build .pytest_cache .mutate
