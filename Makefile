# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL ?=
DEMO_MODEL ?= models/demo.gguf

ifneq ($(MODEL),)
RUN_DEPS := $(VENV)/.installed-oxillama
RUN_ARGS := --engine oxillama --model $(MODEL)
endif

.PHONY: run test lint bench fmt readme clean demo-model browser postgres redis

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

$(VENV)/.installed-oxillama: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[oxillama,models]'
	touch $@

run: $(VENV)/.installed $(RUN_DEPS)
	$(BIN)/python -m oxiserve --host $(HOST) --port $(PORT) $(RUN_ARGS)

# a tiny GGUF model built here (no download): then `make run MODEL=models/demo.gguf`
demo-model: $(VENV)/.installed-oxillama
	mkdir -p $(dir $(DEMO_MODEL))
	$(BIN)/python -m oxiserve.engine.tiny_gguf --out $(DEMO_MODEL)

test: $(VENV)/.installed-bench browser postgres redis
	$(BIN)/python -m pytest

# the browser test's headless Chromium, from the system's packages where this machine allows it
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    { apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && \
	        apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; }; }; } || \
	  echo "note: chromium could not be installed here; tests/test_browser.py will skip"

# the PostgreSQL store's tests start a private server: its programs, from the system's packages
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    { apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && \
	        apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1; }; }; } || \
	  echo "note: postgresql could not be installed here; the PostgreSQL store tests will skip"

# the Redis bus's tests start a private server: redis-server, from the system's packages
redis:
	@command -v redis-server >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    { apt-get install -y -q --no-install-recommends redis-server >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && \
	        apt-get install -y -q --no-install-recommends redis-server >/dev/null 2>&1; }; }; } || \
	  echo "note: redis-server could not be installed here; the Redis bus tests will skip"

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
	$(BIN)/python -m bench engine
	$(BIN)/python -m bench sim-cost
	$(BIN)/python -m bench bus

readme: $(VENV)/.installed-dev
	$(BIN)/python -m scripts.readme_tables

clean:
	rm -rf $(VENV) build *.egg-info
