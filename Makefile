PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The collect parser compiled with mypyc (optional: without a C compiler it runs from
# its sources). Rebuilt whenever one of its modules changes; see pipeline/collect/native.py.
NATIVE := pipeline/collect/_native.json
NATIVE_SOURCES := $(addprefix pipeline/collect/,claude_code.py codex.py content.py errors.py lines.py redact.py shard.py)

.PHONY: setup native demo test lint typecheck bench clean browser

setup: $(STAMP) $(NATIVE)

native: $(STAMP)
	rm -f $(NATIVE)
	$(MAKE) $(NATIVE)

$(NATIVE): $(STAMP) $(NATIVE_SOURCES)
	@mkdir -p build
	@if $(BIN)/python -m pipeline.collect.native build >build/native.log 2>&1; then \
		echo "collect parser compiled (mypyc)"; \
	else \
		echo "collect parser not compiled, runs from its sources (see build/native.log)"; \
		echo '{"failed": true}' >$(NATIVE); \
	fi

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: setup
	$(BIN)/python -m pipeline.demo

lint: setup
	$(BIN)/ruff check pipeline schemas tests bench
	$(BIN)/mypy

test: setup lint browser
	$(BIN)/python -m pytest -q tests

# Debian's Chromium, for the report's browser test (tests/test_report.py).
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium >/dev/null)

bench: setup
	$(BIN)/python bench/collect/run.py

clean:
	rm -rf build pipeline/collect/*.so pipeline/collect/_screens $(NATIVE) demo data/objects data/cache data/lake.duckdb receipts/2* receipts/cache exports/2*
