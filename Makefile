# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install clean ci

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,anatomy,evaluate]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/segpipe demo --out runs/demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/hadolint --failure-threshold warning Dockerfile

# What CI runs (as root): make test, then the image built and checked on a real engine.
ci:
	bash .ci/run

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
