# The two commands a newcomer types: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CODE := pdp issuer pep tests benchmarks

.PHONY: serve test lint typecheck check-policies pytest bench fmt proto clean

# The compiled reader is built anew from its .pyx (no stale one stays if the build fails).
$(STAMP): pyproject.toml setup.py pdp/doors/_wire.pyx
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	rm -f pdp/doors/_wire.c pdp/doors/_wire.*.so
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

# Runs the gRPC decision service on the shipped policies (Ctrl-C drains and stops).
serve: $(STAMP)
	$(BIN)/tessera serve --policies policies

test: lint typecheck check-policies pytest

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/tessera fmt --check policies
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# Every bundle: the shipped policies and each example bundle below them (bundle.toml).
# Each is checked warning-free, and its tests must exercise every one of its rules.
BUNDLES := policies $(patsubst %/bundle.toml,%,$(wildcard policies/examples/*/bundle.toml))

check-policies: $(STAMP)
	for bundle in $(BUNDLES); do \
	  $(BIN)/tessera check --strict $$bundle && \
	  $(BIN)/tessera test --coverage-min 100 $$bundle || exit 1; \
	done

pytest: $(STAMP) browser
	$(BIN)/pytest

# The compliance report's tests open the HTML report in headless Chromium (Debian's package).
.PHONY: browser
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

bench: $(STAMP)
	$(BIN)/python benchmarks/engine.py

# Regenerate the gRPC stubs after changing proto/ (a test fails until you do).
proto: $(STAMP)
	$(BIN)/python -m pdp.serve.protogen

fmt: $(STAMP)
	$(BIN)/ruff format $(CODE)
	$(BIN)/tessera fmt policies

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis .import_linter_cache
	rm -f pdp/doors/_wire.c pdp/doors/_wire.*.so
