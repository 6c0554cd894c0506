# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The organisers' BraTS 2025 scorer, a test oracle only (AGPL-3.0; pins numpy<2.3 and cc3d<4,
# which segpipe's runtime cannot take): its own venv, never in the image.
ORACLE ?= .venv-oracle
ORACLE_STAMP := $(ORACLE)/.installed

.PHONY: demo test lint install oracle clean ci

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,anatomy,evaluate,openvino]'
	touch $(STAMP)

install: $(STAMP)

$(ORACLE_STAMP):
	$(PYTHON) -m venv $(ORACLE)
	$(ORACLE)/bin/pip install --quiet --disable-pip-version-check brats-evaluation==0.0.10 panoptica==2.1.7
	touch $(ORACLE_STAMP)

oracle: $(ORACLE_STAMP)

demo: $(STAMP)
	$(BIN)/segpipe demo --out runs/demo

test: $(STAMP) $(ORACLE_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/hadolint --failure-threshold warning Dockerfile

# What CI runs (as root): make test, then the image built and checked on a real engine.
ci:
	bash .ci/run

clean:
	rm -rf $(VENV) $(ORACLE) runs .pytest_cache .ruff_cache
