# Quickstart targets. Each installs what it needs into .venv (torch pinned to a CPU build).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench reproduce clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m lightning_bet.demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check lightning_bet tests
	$(VENV)/bin/ruff format --check lightning_bet tests

bench: $(STAMP)
	$(VENV)/bin/lightning-bet bench

reproduce: $(STAMP)
	$(VENV)/bin/lightning-bet reproduce --dataset digits --out runs/reproduce_digits

clean:
	rm -rf runs lightning_logs .pytest_cache
