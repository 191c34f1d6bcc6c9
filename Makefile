# Every target installs what it needs: a fresh machine with Python 3.11 and make is enough.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run test lint fmt typecheck pytest openapi openapi-check fuzz bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its test extras

run: $(STAMP) ## migrate the embedded SQLite in ./var, then serve on 127.0.0.1:8000
	$(BIN)/fairunlock db upgrade
	$(BIN)/fairunlock serve --host 127.0.0.1 --port 8000

test: $(STAMP) lint typecheck openapi-check pytest ## everything CI checks

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP) ## mypy --strict over the packages and their tests
	$(BIN)/mypy --strict service policy audit bench tests

pytest: $(STAMP) ## the test suite (SQLite and, when reachable, PostgreSQL)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

openapi: $(STAMP) ## regenerate the committed spec
	$(BIN)/python -m service.openapi_spec --write openapi/openapi.json

openapi-check: $(STAMP) ## fail when the committed spec differs from the app
	$(BIN)/python -m service.openapi_spec --check openapi/openapi.json

FUZZ_EXAMPLES ?= 100
fuzz: $(STAMP) ## longer contract fuzzing (schemathesis) of a served process; FUZZ_EXAMPLES=N per operation
	FAIRUNLOCK_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/evidence/test_contract_fuzz.py -s -p no:cacheprovider $(PYTEST_ARGS)

BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

BENCH_OUT ?= docs/benchmarks/$(shell date -u +%Y-%m-%d)
bench: $(BENCH_STAMP) ## every benchmark in bench/ (tens of minutes); JSON and PNG charts in BENCH_OUT
	@command -v wrk >/dev/null || echo "NOTE: wrk not found (apt-get install wrk): HTTP figures fall back to an httpx client"
	mkdir -p $(BENCH_OUT)
	$(BIN)/python -m bench.bench_policy
	$(BIN)/python -m bench.bench_audit_append
	$(BIN)/python -m bench.bench_audit_verify
	$(BIN)/python -m bench.bench_audit_export
	$(BIN)/python -m bench.bench_audit_proofs
	$(BIN)/python -m bench.bench_asgi_cpu
	$(BIN)/python -m bench.bench_verify_cpu
	$(BIN)/python -m bench.bench_http --target unlock --database sqlite --workers 1,2 --connections 32,64 --output $(BENCH_OUT)/http-unlock-sqlite.json
	$(BIN)/python -m bench.bench_http --target unlock --database postgres --workers 1,2 --connections 32,64 --output $(BENCH_OUT)/http-unlock-postgres.json
	$(BIN)/python -m bench.bench_totp_verify --workers 1,2 --connections 32,64 --output $(BENCH_OUT)/totp-verify-sqlite.json
	$(BIN)/python -m bench.bench_totp_verify --database postgres --workers 1,2 --connections 32 --output $(BENCH_OUT)/totp-verify-postgres.json
	$(BIN)/python -m bench.bench_peer --workers 1,2 --connections 32,64 --runs 3 --output $(BENCH_OUT)/peer-privacyidea.json
	$(BIN)/python -m bench.charts $(BENCH_OUT)/*.json

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
