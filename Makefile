# Quickstart targets. Each installs what it needs into .venv (torch pinned to a CPU build).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench peers reproduce clean

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

# The peers users compare against, in their own venv (never in the product's dependencies or CI):
# Larq + Larq Compute Engine 0.16 on the TensorFlow they were built against, and PyTorchFI.
# Then: .venv/bin/lightning-bet bench peers
PEERS := .venv-peers
peers: $(STAMP)
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet torch==2.13.0
	$(PEERS)/bin/python -m pip install --quiet "tensorflow==2.16.2" "tf_keras==2.16.0" \
		"larq==0.14.0" "larq-compute-engine==0.16.0" "pytorchfi==0.6.0" "numpy<2"

reproduce: $(STAMP)
	$(VENV)/bin/lightning-bet reproduce --dataset digits --out runs/reproduce_digits

clean:
	rm -rf runs lightning_logs .pytest_cache
