# dynrec: `make demo` runs the main job, `make test` runs every check. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DYNREC_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: venv demo test lint typecheck imports bench-pages clean

$(BIN)/dynrec: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[all,dev]'
	touch $(BIN)/dynrec

venv: $(BIN)/dynrec

demo: venv
	$(BIN)/python -m dynrec.cli.demo --dataset ml-100k

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m benchmarks.pages --check

bench-pages: venv
	$(BIN)/python -m benchmarks.pages

typecheck: venv
	$(BIN)/mypy

imports: venv
	$(BIN)/lint-imports

test: venv lint typecheck imports
	$(BIN)/pytest -x

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
