PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck bench clean

setup: $(STAMP)

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

test: setup lint
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python bench/collect/run.py

clean:
	rm -rf demo data/objects data/cache data/lake.duckdb receipts/2* receipts/cache exports/2*
