# Every target works on a fresh machine with Python 3.11+ and a C compiler.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?=

.PHONY: install install-dev tools run test lint build debug bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps: re-install (and so recompile _core) only when the build inputs change.
BUILD_INPUTS := pyproject.toml setup.py $(wildcard isekai/_core/*.pyx isekai/_core/*.pxd)

$(VENV)/.installed: $(BIN)/python $(BUILD_INPUTS)
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python $(BUILD_INPUTS)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

run: install
	$(BIN)/isekai run $(if $(CONFIG),-c $(CONFIG),)

# Tools beyond Python packages (promtool, from Debian's prometheus package) into $(BIN);
# quick when already there.
tools:
	bash tests/tools.sh $(BIN)

test: install-dev tools
	$(BIN)/python -m pytest -q -n 2

lint: install-dev
	$(BIN)/ruff check isekai tests bench
	$(BIN)/ruff format --check isekai tests bench

# Rebuild the Cython extensions in place after editing a .pyx.
build: $(BIN)/python
	$(BIN)/python setup.py build_ext --inplace --force

# Line tracing + annotated HTML (isekai/_core/*.html) for profiling and coverage.
debug: $(BIN)/python
	ISEKAI_CYTHON_TRACE=1 ISEKAI_CYTHON_ANNOTATE=1 $(BIN)/python setup.py build_ext --inplace --force

bench: install-dev
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf build dist *.egg-info isekai/_core/*.c isekai/_core/*.so isekai/_core/*.html
