# The two set-up commands the README promises:
#   make serve   install (CPU torch first) into .venv and run the server
#   make test    install the test extras and run lint, types and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build. Installing it before the package keeps pip from pulling a multi-GB CUDA build;
# override with TORCH="torch==2.13.0 --index-url ..." or TORCH=torch for a GPU machine.
TORCH ?= torch==2.13.0
ARGS ?=

.PHONY: install install-test serve test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test]"

serve: install
	$(BIN)/qasr serve $(ARGS)

lint:
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: install-test lint
	$(BIN)/python -m pytest $(ARGS)
