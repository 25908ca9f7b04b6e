# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint bench fmt readme clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	# an editable install has no bytecode yet: compile it once (faster cold starts)
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m compileall -q oxiserve bench
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/python -m oxiserve --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-bench
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check oxiserve tests bench scripts
	$(BIN)/ruff format --check oxiserve tests bench scripts
	$(BIN)/mypy --strict oxiserve

fmt: $(VENV)/.installed-dev
	$(BIN)/ruff format oxiserve tests bench scripts
	$(BIN)/ruff check --fix oxiserve tests bench scripts

bench: $(VENV)/.installed-bench
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m compileall -q oxiserve bench
	$(BIN)/python -m bench compare

readme: $(VENV)/.installed-dev
	$(BIN)/python -m scripts.readme_tables

clean:
	rm -rf $(VENV) build *.egg-info
