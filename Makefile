# The two commands a newcomer types: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint typecheck pytest bench check-policies fmt clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

# The decision service arrives with the gRPC service; until then `make serve` loads,
# checks and tests the shipped policies and says so.
serve: $(STAMP)
	$(BIN)/tessera check policies
	$(BIN)/tessera test policies
	@echo "the gRPC decision service is not built yet; try: $(BIN)/tessera explain --policies policies REQUEST.json"

test: $(STAMP) lint typecheck check-policies pytest

lint: $(STAMP)
	$(BIN)/ruff check pdp issuer pep tests benchmarks
	$(BIN)/ruff format --check pdp issuer pep tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

check-policies: $(STAMP)
	$(BIN)/tessera check policies
	$(BIN)/tessera test policies

py# The decision service arrives with the gRPC service; until then `make serve` loads,
# checks and tests the shipped policies and says so.
serve: $(STAMP)
	$(BIN)/tessera check policies
	$(BIN)/tessera test policies
	@echo "the gRPC decision service is not built yet; try: $(BIN)/tessera explain --policies policies REQUEST.json"

test: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/engine.py

fmt: $(STAMP)
	$(BIN)/ruff format pdp issuer pep tests benchmarks
	$(BIN)/tessera fmt policies

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
