# The two set-up commands the README promises:
#   make serve   install into .venv (torch first, then qasr with the locked dependency set) and serve
#   make test    install the test extras the same way, then lint, type checks and the test suite
# and one for maintainers:
#   make lock    re-resolve every dependency to its newest allowed release and rewrite the lock
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The exact, tested versions of everything qasr installs (a pip constraints file; pyproject.toml keeps
# the loose ranges that library users need). Update it deliberately with `make lock`, then run the tests.
LOCK := requirements/lock.txt
TORCH_VERSION := $(shell sed -n 's/^torch==//p' $(LOCK))
# Where torch comes from: the PyTorch CPU index gives the CPU-only build (about 200 MB). For a GPU,
# pass the CUDA index that matches your driver (TORCH_INDEX=https://download.pytorch.org/whl/cu128)
# or TORCH_INDEX=pypi (PyPI's torch: the CUDA build on Linux x86_64, several GB).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
ARGS ?=

.PHONY: install install-test serve test lint lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c $(LOCK) pip setuptools

install: $(BIN)/python
	scripts/install-torch.sh $(BIN)/pip $(TORCH_VERSION) $(TORCH_INDEX)
	$(BIN)/pip install -q -c $(LOCK) --no-build-isolation -e .

install-test: $(BIN)/python
	scripts/install-torch.sh $(BIN)/pip $(TORCH_VERSION) $(TORCH_INDEX)
	$(BIN)/pip install -q -c $(LOCK) --no-build-isolation -e ".[test]"
# Older SDKs for the end-to-end tests, once each, without their dependencies (2.0.2's serve):
# 1.24.6 (sync and realtime APIs) and 1.25.2, the oldest 1.x with dashscope.audio.qwen_asr (filetrans)
	for v in 1.24.6 1.25.2; do \
		test -d $(VENV)/sdk/dashscope-$$v/dashscope || \
		$(BIN)/pip install -q --no-deps --target $(VENV)/sdk/dashscope-$$v -r requirements/sdk-$$v.txt || exit 1; \
	done

serve: install
	$(BIN)/qasr serve $(ARGS)

lint:
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: install-test lint
	$(BIN)/python -m pytest --cov=qasr --cov-report=term:skip-covered $(ARGS)

lock:
	scripts/lock.sh $(PYTHON) $(TORCH_INDEX) $(LOCK)
