# The two commands: `make run` and `make test`. Everything else is a detail of them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Tidegate needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.run-deps: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e .
	touch $@

$(VENV)/.test-deps: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@ $(VENV)/.run-deps

## make run: start Tidegate on the embedded default with a demo tenant.
run: $(VENV)/.run-deps
	$(BIN)/tidegate serve --demo

# The OpenID provider the identity tests run (npm's oidc-provider on the machine's Node.js).
tests/idp/node_modules/.installed: tests/idp/package.json tests/idp/package-lock.json
	cd tests/idp && npm ci --no-audit --no-fund
	touch $@

## make test: lint, type-check and the whole suite (starts what the tests need).
test: $(VENV)/.test-deps tests/idp/node_modules/.installed lint typecheck
	$(BIN)/pytest

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.test-deps
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .tidegate .pytest_cache .mypy_cache .ruff_cache

## make bench: Tidegate, a webhook receiver and a baseline app on 127.0.0.1: every scenario,
## including the sustained 5,000 events/s run and the 10-minute soak (~15-20 minutes).
## SOAK=0 skips the soak (~5 min); SOAK_RATE=N soaks at N events/s instead of 5,000;
## QUICK=1 runs shorter windows without steps or soak (~2 min).
## ENGINE=embedded (default), ENGINE=postgres+kafka, or ENGINE=both (side by side, no soak).
## PROCESSES=N runs `tidegate serve --processes N` (default: cores + 1; PROCESSES=1: one process).
## With wrk on PATH (apt-get install wrk) the baseline and (a) also run under wrk, and
## with nginx installed too (apt-get install nginx-light), nginx answering by itself.
## Appends a section to docs/benchmarks.md and writes bench/results/<timestamp>.json.
bench: $(VENV)/.test-deps
	$(BIN)/python bench/run.py --engine $(or $(ENGINE),embedded)$(if $(filter 1,$(QUICK)), --quick)$(if $(filter 0,$(SOAK)), --soak-seconds 0)$(if $(SOAK_RATE), --soak-rate $(SOAK_RATE))$(if $(PROCESSES), --processes $(PROCESSES))
